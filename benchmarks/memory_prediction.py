"""Predicted against measured peak memory: real all-MiniLM-L6-v2 on CPU (peak RSS), short trials.

Runs each configuration of a fixed list as its own ``qa-ray train`` process (2 optimizer steps
and one evaluation, so a process's peak RSS is that configuration's alone), calibrates
:class:`qa_ray.search.memory.MemoryModel` on the first three, and predicts the others, which
it never saw. Prints the prior's and the calibrated model's median and worst relative error on
those, and how many it predicted more than 10 % under their measurement without its
uncertainty (2 sd) covering it.

``--curves TABLE --sweep SWEEP.yaml`` does the same from a recorded sweep without running
anything: the curve table's measured peaks (``benchmarks/curves/``), calibrated on its first
three trials of distinct memory keys, the others predicted.

    bash /work/shared/tools/stage_models.sh models minilm
    .venv/bin/python benchmarks/memory_prediction.py --model models/all-MiniLM-L6-v2 \\
        --data ../shared/data/squad/dev-v1.1.json.gz --out /tmp/memory

About 40 minutes on a loaded 2-core CPU (a trial process takes 1-2 minutes there). Figures go
to OUT/memory_prediction.json too. ``--reanalyse RESULTS.json`` predicts again from the
measurements an earlier run stored there, without running anything (for a changed predictor:
its held-out configurations are then no longer unseen by whoever changed it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qa_ray import metrics as m
from qa_ray.search.memory import MemoryModel

# (batch, sequence, fine-tune, LoRA rank, gradient checkpointing, layers kept, eval batch)
CALIBRATION = [
    (4, 128, "full", None, False, None, 16),
    (16, 256, "lora", 8, False, None, 32),
    (32, 384, "full", None, False, None, 64),
]
HELD_OUT = [
    (2, 64, "full", None, False, None, 16),
    (8, 128, "full", None, False, None, 16),
    (8, 256, "full", None, False, None, 32),
    (16, 128, "full", None, False, None, 32),
    (16, 384, "full", None, False, None, 32),
    (24, 256, "full", None, False, None, 64),
    (32, 128, "full", None, False, None, 64),
    (8, 384, "full", None, True, None, 32),
    (32, 256, "full", None, True, None, 64),
    (16, 256, "full", None, False, 3, 32),
    (32, 384, "full", None, False, 2, 64),
    (4, 64, "lora", 4, False, None, 16),
    (8, 128, "lora", 16, False, None, 16),
    (8, 384, "lora", 64, False, None, 32),
    (32, 256, "lora", 8, False, None, 64),
    (32, 384, "lora", 16, False, None, 64),
    (24, 384, "lora", 8, True, None, 64),
    (16, 256, "lora", 8, False, 4, 32),
    (4, 384, "full", None, False, None, 128),
    (2, 256, "lora", 8, False, None, 128),
]


def trial_config(spec, model: str, data: str, out: Path) -> dict:
    batch, seq, finetune, r, checkpointing, keep, eval_batch = spec
    model_cfg: dict = {"name_or_path": model, "task": "extractive", "finetune": finetune}
    if r is not None:
        model_cfg["lora"] = {"r": r}
    if checkpointing:
        model_cfg["gradient_checkpointing"] = True
    if keep is not None:
        model_cfg["keep_layers"] = keep
    return {
        "name": "memory-prediction",
        "model": model_cfg,
        "data": {
            "path": data,
            "eval_fraction": 0.2,
            "max_train_examples": 2 * batch + 16,  # two steps of windows, tokenized quickly
            "max_eval_examples": eval_batch,  # a full evaluation batch (or more: windows)
            "max_seq_length": seq,
            "doc_stride": min(128, seq // 4),
            "cache_dir": str(out / "cache"),
        },
        "train": {
            "per_device_batch_size": batch,
            "eval_batch_size": eval_batch,
            "max_steps": 2,
            "device": "cpu",
            "save_checkpoints": False,
            "learning_rate": 1e-4,
        },
        "output_dir": str(out / "runs" / name_of(spec)),
    }


def name_of(spec) -> str:
    batch, seq, finetune, r, checkpointing, keep, eval_batch = spec
    parts = [f"b{batch}", f"s{seq}", finetune + (str(r) if r else ""), f"e{eval_batch}"]
    parts += ["gc"] if checkpointing else []
    parts += [f"keep{keep}"] if keep else []
    return "-".join(parts)


def measure(cfg: dict, out: Path) -> float:
    path = out / "trials" / f"{Path(cfg['output_dir']).name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "qa_ray.cli", "train", str(path)],
        capture_output=True,
        text=True,
    )
    metrics = Path(cfg["output_dir"], "metrics.json")
    if done.returncode != 0 or not metrics.is_file():
        raise RuntimeError(f"{path}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return float(json.loads(metrics.read_text())[m.PEAK_MEMORY_MB])


def errors(model: MemoryModel, rows) -> dict:
    rel, under_uncovered = [], []
    for cfg, measured in rows:
        p = model.predict(cfg)
        rel.append((p.peak_mb - measured) / measured)
        if p.peak_mb < 0.9 * measured and p.peak_mb + 2 * p.sd_mb < measured:
            under_uncovered.append(name_of_cfg(cfg))
    absolute = sorted(abs(e) for e in rel)
    return {
        "median_abs_rel_error": statistics.median(absolute),
        "worst_abs_rel_error": absolute[-1],
        "worst_under": min(rel),
        "under_10pct_not_covered": under_uncovered,
    }


def name_of_cfg(cfg: dict) -> str:
    return Path(cfg["output_dir"]).name


def from_curves(table_path: Path, sweep_path: Path, calibrate: int = 3) -> dict:
    """Held-out evidence from a recorded sweep: its curve table's measured peaks (each trial's
    largest ``peak_memory_mb``), its configurations rebuilt from the sweep file and each
    trial's params; calibrated on the first ``calibrate`` trials of distinct memory keys, the
    others with a key not among those predicted."""
    from qa_ray.search.memory import memory_key
    from qa_ray.search.space import AXES, apply_params
    from qa_ray.sweep.config import load_sweep_config

    base = load_sweep_config(str(sweep_path)).trial_config().model_dump()
    table = json.loads(table_path.read_text())
    rows = []
    for t in table["trials"]:
        peaks = [r[m.PEAK_MEMORY_MB] for r in t["rows"] if r.get(m.PEAK_MEMORY_MB) is not None]
        if t["outcome"] != "complete" or not peaks:
            continue
        params = {
            k: yaml.safe_load(v) if isinstance(v, str) else v
            for k, v in t["config"].items()
            if k in AXES
        }
        rows.append((t["name"], apply_params(base, params), max(peaks)))
    model, prior, keys = MemoryModel("cpu"), MemoryModel("cpu"), set()
    calibration = []
    for name, cfg, peak in rows:
        if len(calibration) < calibrate and memory_key(cfg) not in keys:
            keys.add(memory_key(cfg))
            model.observe(cfg, peak)
            calibration.append((name, peak))
    held_out = [(cfg, peak, name) for name, cfg, peak in rows if memory_key(cfg) not in keys]
    for cfg, _, name in held_out:
        cfg["output_dir"] = name  # name_of_cfg reads it
    pairs = [(cfg, peak) for cfg, peak, _ in held_out]
    return {
        "command": " ".join(sys.argv),
        "table": str(table_path),
        "device": "cpu (peak RSS of a sweep's Ray Train worker)",
        "calibration": dict(calibration),
        "held_out": [
            {
                "config": name,
                "measured_mb": peak,
                "predicted_mb": model.predict(cfg).peak_mb,
                "sd_mb": model.predict(cfg).sd_mb,
            }
            for cfg, peak, name in held_out
        ],  # fmt: skip
        "prior": errors(prior, pairs),
        "calibrated": errors(model, pairs),
        "n_held_out": len(pairs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--reanalyse", type=Path, help="an earlier run's memory_prediction.json")
    ap.add_argument("--curves", type=Path, help="a curve table: predict its measured peaks")
    ap.add_argument("--sweep", type=Path, help="with --curves: the sweep file it was recorded by")
    args = ap.parse_args()
    if args.curves:
        args.out.mkdir(parents=True, exist_ok=True)
        result = from_curves(args.curves, args.sweep)
        for label in ("prior", "calibrated"):
            e = result[label]
            print(
                f"{label:10s} over {result['n_held_out']} held-out configs: median |error| "
                f"{e['median_abs_rel_error']:.1%}, worst {e['worst_abs_rel_error']:.1%}, "
                f"most under {e['worst_under']:+.1%}, >10 % under and not covered by 2 sd: "
                f"{len(e['under_10pct_not_covered'])}"
            )
        (args.out / "memory_prediction_curves.json").write_text(json.dumps(result, indent=2))
        return
    if not (args.model and args.data):
        ap.error("--model and --data are needed (or --curves and --sweep)")
    args.out.mkdir(parents=True, exist_ok=True)
    model_path, data = str(Path(args.model).resolve()), str(Path(args.data).resolve())

    started = time.time()
    measured = {}
    earlier = {}
    if args.reanalyse:
        before = json.loads(args.reanalyse.read_text())
        earlier = dict(before["calibration"])
        earlier.update({r["config"]: r["measured_mb"] for r in before["held_out"]})
    for spec in CALIBRATION + HELD_OUT:
        cfg = trial_config(spec, model_path, data, args.out)
        name = name_of(spec)
        measured[name] = (cfg, earlier[name] if args.reanalyse else measure(cfg, args.out))
        print(f"{name:28s} measured {measured[name][1]:7.0f} MB", flush=True)

    calibration = [measured[name_of(s)] for s in CALIBRATION]
    held_out = [measured[name_of(s)] for s in HELD_OUT]
    prior, model = MemoryModel("cpu"), MemoryModel("cpu")
    for cfg, peak in calibration:
        model.observe(cfg, peak)
    mean, _ = model.coefficients()
    rows = []
    for cfg, peak in held_out:
        p0, p = prior.predict(cfg), model.predict(cfg)
        rows.append(
            {
                "config": name_of_cfg(cfg),
                "measured_mb": peak,
                "prior_mb": p0.peak_mb,
                "predicted_mb": p.peak_mb,
                "sd_mb": p.sd_mb,
            }
        )
        print(
            f"{name_of_cfg(cfg):28s} measured {peak:7.0f}  prior {p0.peak_mb:7.0f}  "
            f"predicted {p.peak_mb:7.0f} +- {p.sd_mb:4.0f}  ({(p.peak_mb - peak) / peak:+.1%})"
        )
    result = {
        "command": " ".join(sys.argv),
        "reanalysed_from": str(args.reanalyse) if args.reanalyse else None,
        "device": "cpu (peak RSS of a `qa-ray train` process)",
        "calibration": {name_of_cfg(c): peak for c, peak in calibration},
        "coefficients": {"c0_mb": mean[0], "c1_static": mean[1], "c2_activations": mean[2]},
        "held_out": rows,
        "prior": errors(prior, held_out),
        "calibrated": errors(model, held_out),
        "n_held_out": len(held_out),
        "wall_seconds": time.time() - started,
    }
    for label in ("prior", "calibrated"):
        e = result[label]
        print(
            f"{label:10s} over {len(held_out)} held-out configs: median |error| "
            f"{e['median_abs_rel_error']:.1%}, worst {e['worst_abs_rel_error']:.1%}, "
            f"most under {e['worst_under']:+.1%}, >10 % under and not covered by 2 sd: "
            f"{len(e['under_10pct_not_covered'])}"
        )
    (args.out / "memory_prediction.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
