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

Bad input (a missing model folder or data file, ``--curves`` without ``--sweep`` or ``--sweep``
without it, a curve table, sweep or RESULTS.json that cannot be read or lacks a field it needs,
an OUT that cannot be made): one line on stderr, exit 2, before any trial runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import BadInput, OneLineParser, make_folder, need, read_json, refuse  # noqa: E402

from qa_ray import metrics as m  # noqa: E402
from qa_ray.errors import ConfigError  # noqa: E402
from qa_ray.search.memory import MemoryModel  # noqa: E402

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

    table = curve_table(table_path)
    base = load_sweep_config(str(sweep_path)).trial_config().model_dump()
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
    if not held_out:
        raise BadInput(
            f"{table_path}: `trials`: none left to predict ({len(rows)} complete with a measured "
            f"{m.PEAK_MEMORY_MB}, all of the {len(keys)} memory key(s) calibrated on)"
        )
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


def curve_table(path: Path) -> dict:
    """A curve table (``benchmarks/curves/``) with the fields :func:`from_curves` reads checked:
    each trial's ``name``, ``outcome``, ``config`` and ``rows``."""
    table = read_json(path)
    need(path, None, table, isinstance(table, dict), "a mapping")
    trials = table.get("trials")
    need(path, "trials", trials, isinstance(trials, list), "a list of trials")
    for i, t in enumerate(trials):
        need(path, f"trials[{i}]", t, isinstance(t, dict), "a mapping")
        for field, kind, rule in (("name", str, "a string"), ("outcome", str, "a string"),
                                  ("config", dict, "a mapping"), ("rows", list, "a list")):  # fmt: skip
            need(path, f"trials[{i}].{field}", t.get(field), isinstance(t.get(field), kind), rule)
        for j, r in enumerate(t["rows"]):
            peak = r.get(m.PEAK_MEMORY_MB) if isinstance(r, dict) else None
            ok = isinstance(r, dict) and (peak is None or _is_number(peak))
            need(
                path,
                f"trials[{i}].rows[{j}]",
                r,
                ok,
                f"a mapping with a numeric {m.PEAK_MEMORY_MB}",
            )
    return table


def earlier_measurements(path: Path) -> dict[str, float]:
    """An earlier run's memory_prediction.json: every configuration's measured peak, by name
    (each of the fixed list must be there)."""
    before = read_json(path)
    need(path, None, before, isinstance(before, dict), "a mapping")
    calibration, held_out = before.get("calibration"), before.get("held_out")
    ok = isinstance(calibration, dict) and all(_is_number(v) for v in calibration.values())
    need(path, "calibration", calibration, ok, "a mapping of configuration to MB")
    need(path, "held_out", held_out, isinstance(held_out, list), "a list")
    for i, r in enumerate(held_out):
        ok = isinstance(r, dict) and isinstance(r.get("config"), str)
        need(path, f"held_out[{i}]", r, ok and _is_number(r.get("measured_mb")),
             "a mapping with `config` and a numeric `measured_mb`")  # fmt: skip
    earlier = dict(calibration)
    earlier.update({r["config"]: r["measured_mb"] for r in held_out})
    missing = [name_of(s) for s in CALIBRATION + HELD_OUT if name_of(s) not in earlier]
    if missing:
        raise BadInput(
            f"{path}: `calibration` and `held_out` must measure every configuration, but got "
            f"none for {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}"
        )
    return earlier


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def checked(ap: OneLineParser, args) -> dict[str, float]:
    """The flags and files checked before any trial; the earlier measurements (``--reanalyse``).

    Raises:
        BadInput: a flag or file that cannot be used.
    """
    if args.curves or args.sweep:
        if not (args.curves and args.sweep):
            ap.error("--curves and --sweep go together")
        return {}
    if not (args.model and args.data):
        ap.error("--model and --data are needed (or --curves and --sweep)")
    if not Path(args.model).is_dir():
        raise BadInput(f"--model: no such folder, but got {args.model!r}")
    earlier = earlier_measurements(args.reanalyse) if args.reanalyse else {}
    if not args.reanalyse and not Path(args.data).is_file():  # read by each trial
        raise BadInput(f"--data: no such file, but got {args.data!r}")
    make_folder("--out", args.out)
    return earlier


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="memory_prediction.py", description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--reanalyse", type=Path, help="an earlier run's memory_prediction.json")
    ap.add_argument("--curves", type=Path, help="a curve table: predict its measured peaks")
    ap.add_argument("--sweep", type=Path, help="with --curves: the sweep file it was recorded by")
    args = ap.parse_args(argv)
    try:
        earlier = checked(ap, args)
        if args.curves:
            result = from_curves(args.curves, args.sweep)
            make_folder("--out", args.out)
    except (BadInput, ConfigError) as e:
        return refuse(ap.prog, e)
    except ValueError as e:  # a trial's configuration the memory account cannot read
        return refuse(ap.prog, BadInput(f"{args.curves}: {e}"))
    if args.curves:
        for label in ("prior", "calibrated"):
            e = result[label]
            print(
                f"{label:10s} over {result['n_held_out']} held-out configs: median |error| "
                f"{e['median_abs_rel_error']:.1%}, worst {e['worst_abs_rel_error']:.1%}, "
                f"most under {e['worst_under']:+.1%}, >10 % under and not covered by 2 sd: "
                f"{len(e['under_10pct_not_covered'])}"
            )
        (args.out / "memory_prediction_curves.json").write_text(json.dumps(result, indent=2))
        return 0
    model_path, data = str(Path(args.model).resolve()), str(Path(args.data).resolve())

    started = time.time()
    measured = {}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
