"""A synthetic curve table (the schema of ``qa_ray/report/curves.py``), deterministic for a seed: for
tests of the replay and for trying a rule before a real sweep's table exists. Not measured.

    python benchmarks/curves/synthetic.py --configs 8 --seed 0 -o tests/assets/curves_tiny.json
    python benchmarks/curves/synthetic.py --configs 48 --seed 1 -o /tmp/curves_48.json

Each configuration (full / LoRA rank, 32/8/4 bits, learning rate) sets its peak memory from
its first evaluation on, and an F1 curve ``final * (1 - exp(-step / tau))`` plus noise: full
fine-tunes end higher and cost more memory; a learning rate far from the best ends lower; a
slow start (large tau) makes some curves cross. 4-bit trials run slower per step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

from qa_ray import metrics as m

EVAL_STEPS = (10, 30, 60, 90, 150, 210, 270, 300)
BUDGET_MB = 22000.0


def table(configs: int, seed: int, eval_steps=EVAL_STEPS) -> dict:
    rng = random.Random(seed)
    trials = []
    for i in range(configs):
        finetune = rng.choice(["full", "lora", "lora"])
        rank = 0 if finetune == "full" else rng.choice([4, 8, 16, 64])
        bits = rng.choice([32, 8, 4])
        lr = 10 ** rng.uniform(-5.5, -3.0)
        base_mb = {32: 9000.0, 8: 4500.0, 4: 2600.0}[bits]
        mb = base_mb * (2.6 if finetune == "full" else 1.0 + rank / 160) * rng.uniform(0.95, 1.05)
        final = 80.0 if finetune == "full" else 60.0 + 3 * math.log2(max(rank, 1)) * 0.8
        final -= 12.0 * abs(math.log10(lr) + (4.5 if finetune == "full" else 3.8)) ** 1.5
        final -= {32: 0.0, 8: 1.0, 4: 3.0}[bits]
        final = max(final, 3.0)
        tau = rng.uniform(20.0, 140.0)
        sec = (0.9 if finetune == "full" else 0.6) * {32: 1.0, 8: 1.15, 4: 1.35}[bits]
        rows, noise = [], rng.uniform(0.5, 2.0)
        for s in eval_steps:
            f1 = max(0.0, final * (1 - math.exp(-s / tau)) + rng.gauss(0.0, noise))
            rows.append(
                {
                    m.STEP: s,
                    m.TRAIN_SECONDS: round(s * sec, 2),
                    m.EVAL_F1: round(f1, 2),
                    m.EVAL_EXACT: round(max(0.0, f1 - 9.0), 2),
                    m.PEAK_MEMORY_MB: round(mb, 1),
                }
            )
        trials.append(
            {
                "name": f"trial-{i:03d}",
                "run_id": f"synthetic-{seed}-{i}",
                "outcome": "complete" if mb <= BUDGET_MB else "infeasible",
                "stopped_early_at": None,
                "config": {
                    "finetune": finetune,
                    "lora_r": rank,
                    "quantization_bits": bits,
                    "learning_rate": float(f"{lr:.3g}"),
                },
                "rows": rows if mb <= BUDGET_MB else rows[:1],  # the loop stops it at once
            }
        )
    return {
        "schema": "qa-ray/curves",
        "version": 1,
        "sweep": f"synthetic-{configs}-seed{seed}",
        "parent_run_id": None,
        "objectives": [[m.EVAL_F1, "max"], [m.PEAK_MEMORY_MB, "min"]],
        "constraints": [f"peak_memory_mb <= {BUDGET_MB:g}"],
        "scheduler": None,
        "trials": trials,
    }


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments said in one line on stderr, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def main(argv: list[str] | None = None) -> int:
    p = _OneLineParser(prog="synthetic.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    if args.configs < 1:
        p.error(f"--configs must be >= 1, but got {args.configs}")
    try:
        with open(args.output, "w") as f:
            json.dump(table(args.configs, args.seed), f, indent=1)
            f.write("\n")
    except OSError as e:
        print(f"synthetic.py: {args.output}: cannot be written ({e.strerror})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
