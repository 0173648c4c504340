"""A sweep's winner out of MLflow onto disk: its configuration, its checkpoint or LoRA adapter.

    qa-ray best quickstart --out best/                  # best/<sweep>-<trial>.yaml, for qa-ray train
    qa-ray export quickstart --out winner/ --merge      # the weights, a LoRA adapter merged in

The trial is picked as the report picks it: the best first objective among the trials that
completed within the sweep's constraints (under ``--under N`` of the second objective, or the
trial named by ``--trial``). The configuration is the report's ``best_under_*.yaml``; the
weights are the folder the trial's run names in its ``qa_ray.checkpoint`` tag.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_ray import metrics as m
from qa_ray.errors import ConfigError
from qa_ray.metrics import TAG_CHECKPOINT
from qa_ray.report.summary import best_under, sweep_constraints
from qa_ray.tracking import runs as tracking

__all__ = ["Winner", "export_weights", "pick_trial", "write_config"]

_DEFAULT_OBJECTIVES = ((m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min"))
# peft's auto class for each task family's model head (the same heads the loop trains).
_PEFT_CLASSES = {
    "extractive": "AutoPeftModelForQuestionAnswering",
    "generative": "AutoPeftModelForCausalLM",
    "instruction": "AutoPeftModelForCausalLM",
    "seq2seq": "AutoPeftModelForSeq2SeqLM",
}


@dataclass(frozen=True)
class Winner:
    """The trial picked from a sweep: its parent run, its record (``name``, ``run_id``,
    params and metrics) and why it was picked."""

    parent_run_id: str
    trial: dict[str, Any]
    why: str


def _objectives(uri: str, parent_id: str) -> tuple[tuple[str, str], ...]:
    from qa_ray.report.summary import parse_objectives

    return parse_objectives(tracking.sweep_params(uri, parent_id).get("objectives")) or (
        _DEFAULT_OBJECTIVES
    )


def pick_trial(
    uri: str, sweep_or_run: str, *, trial: str | None = None, under: float | None = None
) -> Winner:
    """The sweep's winner: the trial named ``trial``, else the best first objective among
    the feasible trials, with the second objective ``<= under`` when given.

    Raises:
        ConfigError: no such sweep or trial, or no trial completed within the bounds.
    """
    from qa_ray.pareto import parse_constraint
    from qa_ray.report.summary import summarize

    parent = tracking.find_parent_run(uri, sweep_or_run)
    records = tracking.trial_records(uri, parent)
    if trial is not None:
        names = [r["name"] for r in records]
        if trial not in names:
            raise ConfigError(
                "--trial", [f"`--trial`: no trial {trial!r} in {sweep_or_run!r}, but got "
                            f"{', '.join(names) or 'no trials'}"],
            )  # fmt: skip
        return Winner(parent, records[names.index(trial)], f"named: {trial}")
    objs = _objectives(uri, parent)
    constraints = [parse_constraint(c) for c in sweep_constraints(uri, parent)]
    summary = summarize(parent, records, objs, constraints)
    x = summary.axes[1][0]
    bound = math.inf if under is None else float(under)
    i = best_under(summary.trials, summary.feasible, x, bound, objs[0])
    where = "" if under is None else f" with `{x} <= {under:g}`"
    if i is None:
        raise ConfigError(
            sweep_or_run,
            [f"no trial of {sweep_or_run!r} completed within its constraints{where} "
             f"({len(records)} trials; `qa-ray pareto {sweep_or_run}` lists them)"],
        )  # fmt: skip
    t = summary.trials[i]
    return Winner(parent, t, f"the best {objs[0][0]} ({t.get(objs[0][0])}){where}")


def write_config(uri: str, winner: Winner, out: str | os.PathLike) -> Path:
    """The winner's full configuration as a ``qa-ray train`` YAML in folder ``out`` (the file
    the report writes as ``pareto/best_under_*.yaml``); returns its path."""
    import yaml

    from qa_ray.report.publish import runnable_trial_yaml

    t = winner.trial
    text = tracking.read_artifact(uri, winner.parent_run_id, "sweep_config.yaml")
    if text is None:
        raise ConfigError(
            winner.parent_run_id, ["the sweep's parent run holds no sweep_config.yaml artifact"]
        )
    sweep = yaml.safe_load(text)
    path = Path(out, f"{sweep['name']}-{t['name']}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(runnable_trial_yaml(sweep, tracking.run_params(uri, t["run_id"]), t))
    return path


def export_weights(uri: str, winner: Winner, out: str | os.PathLike, merge: bool = False) -> Path:
    """Copies the winner's newest checkpoint (its run's ``qa_ray.checkpoint`` tag: a folder
    here or in the sweep's bucket) to ``out``; returns ``out``.

    The folder loads with ``from_pretrained`` (a full fine-tune) or as a peft adapter (LoRA).
    With ``merge``, a LoRA adapter is merged into its base model in full precision (peft's
    ``merge_and_unload``; the base read again unquantized, as peft advises for k-bit bases) and
    ``out`` holds a plain model and its tokenizer.

    Raises:
        ConfigError: no checkpoint recorded, or not reachable from here; ``out`` not empty.
    """
    from qa_ray import storage

    t = winner.trial
    run = tracking.mlflow_client(uri).get_run(t["run_id"])
    src = run.data.tags.get(TAG_CHECKPOINT)
    name = f"trial {t['name']!r}"
    if not src:
        raise ConfigError(name, [f"{name} recorded no checkpoint (it ran with "
                                 "`train.save_checkpoints: false`, or never reported one)"])  # fmt: skip
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            "--out", [f"`--out`: must be a new or empty folder, but got {str(out)!r}"]
        )
    if storage.is_uri(src):
        if not storage.exists(src):
            raise ConfigError(name, [f"{name}: its checkpoint {src!r} is not in the bucket"])
        src = storage.fetch_folder(src)
    elif not os.path.isdir(src):
        raise ConfigError(name, [f"{name}: its checkpoint {src!r} is not a folder on this "
                                 "machine (the sweep ran elsewhere): copy it here"])  # fmt: skip
    adapter = Path(src, "adapter_config.json").is_file()
    if not (merge and adapter):
        shutil.copytree(src, out, dirs_exist_ok=True)
        return out
    _merge(Path(src), out)
    return out


def _merge(src: Path, out: Path) -> None:
    import peft
    from transformers import AutoTokenizer

    cfg = json.loads((src / "trial_config.json").read_text())
    task = cfg.get("model", {}).get("task", "extractive")
    if task not in _PEFT_CLASSES:
        raise ConfigError("--merge", [f"`--merge`: a {task!r} trial has no peft model class"])
    model = getattr(peft, _PEFT_CLASSES[task]).from_pretrained(str(src))
    model.merge_and_unload().save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    for extra in ("trial_config.json", "metrics.json"):
        if (src / extra).is_file():
            shutil.copy2(src / extra, out / extra)
