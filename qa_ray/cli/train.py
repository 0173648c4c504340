"""``qa-ray train``: one fine-tune (one trial of a sweep) in this process.

qa-ray train trial.yaml model.name_or_path=models/all-MiniLM-L6-v2 train.max_steps=50
"""

from __future__ import annotations

import json

from qa_ray.cli.codes import EXIT_FAILED, EXIT_OK
from qa_ray.errors import ConfigError


def _check_resumable(cfg) -> str:
    """The checkpoint ``qa-ray train --resume`` continues from; bad input when there is none,
    or when it was written for another model or data."""
    from qa_ray.config.files import config_differences
    from qa_ray.training.session import latest_local_checkpoint

    newest = latest_local_checkpoint(cfg.output_dir)
    if newest is None:
        raise ConfigError(
            "--resume",
            [f"`output_dir`: no checkpoint under {cfg.output_dir}/checkpoints to resume from"],
        )
    saved = json.loads((newest / "trial_config.json").read_text())
    now = cfg.model_dump()
    if now["data"]["squad_v2"] is None:  # unset: the loop decided it, and saved its decision
        now["data"]["squad_v2"] = saved["data"].get("squad_v2")
    changed = config_differences(
        {b: saved[b] for b in ("model", "data")},
        {b: now[b] for b in ("model", "data")},
        was="the checkpoint has",
    )
    if changed:
        raise ConfigError(f"--resume from {newest}", changed)
    return str(newest)


def cmd_train(args) -> int:
    from qa_ray import metrics as m
    from qa_ray.config.files import load_trial_config
    from qa_ray.tracking.runs import resolve_teacher, resolve_tracking_uri
    from qa_ray.training.loop import train_loop_per_worker

    cfg = load_trial_config(args.config, args.overrides)
    cfg = resolve_teacher(cfg, resolve_tracking_uri(None, None))  # teacher: sweep:SWEEP/TRIAL
    if args.resume:
        newest = _check_resumable(cfg)
        print(f"[qa-ray] resuming from {newest}", flush=True)
    print(f"[qa-ray] training {cfg.model.name_or_path} -> {cfg.output_dir}", flush=True)
    result = train_loop_per_worker(cfg.model_dump(), resume=args.resume)
    print(json.dumps(result, indent=2))
    if result.get(m.INFEASIBLE):
        print(f"[qa-ray] stopped, infeasible: {result[m.INFEASIBLE_REASON]}", flush=True)
        return EXIT_FAILED
    print(f"[qa-ray] predictions, metrics.json and checkpoints in {cfg.output_dir}")
    return EXIT_OK
