"""Every bad input the project knows about, one row each: exit 2, a message naming the field
(or file) and the value, and nothing created: no MLflow store, no ``runs/`` folder, no Ray."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml

from qa_ray.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ROOT = Path(__file__).resolve().parents[2]


def _base() -> dict:
    return {
        "name": "bad-input",
        "model": {"name_or_path": str(ASSETS / "wordpiece"), "finetune": "lora"},
        "data": {"path": str(ASSETS / "squad_v1_tiny.json"), "max_seq_length": 128,
                 "doc_stride": 32},
        "train": {"max_steps": 2},
        "search": {
            "num_samples": 2,
            "space": {"params": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            }},
        },
        "storage_path": "runs",
        "tracking": {"tracking_uri": "sqlite:///mlflow.db", "experiment_name": "t"},
    }  # fmt: skip


def _set(d: dict, dotted: str, value) -> dict:
    node = d
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return d


_DELETE = object()


def _sweep(tmp: Path, **changes) -> str:
    cfg = _base()
    for dotted, value in changes.items():
        _set(cfg, dotted.replace("__", "."), value)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _sweep_model_inside(tmp: Path) -> str:
    """A sweep whose model folder travels with a job submitted from ``tmp``."""
    shutil.copytree(ASSETS / "wordpiece", tmp / "models" / "wordpiece")
    return _sweep(tmp, model__name_or_path="models/wordpiece")


def _trial(tmp: Path, **changes) -> str:
    cfg = {k: v for k, v in _base().items() if k in ("model", "data", "train")}
    for dotted, value in changes.items():
        _set(cfg, dotted.replace("__", "."), value)
    return _file(tmp, "trial.yaml", yaml.safe_dump(cfg | {"output_dir": "out"}))


def _file(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _truncated_gz(tmp: Path) -> str:
    raw = gzip.compress((ASSETS / "squad_v1_tiny.json").read_bytes())
    (tmp / "cut.json.gz").write_bytes(raw[: len(raw) // 2])
    return str(tmp / "cut.json.gz")


def _squad_missing_question(tmp: Path) -> str:
    data = json.loads((ASSETS / "squad_v1_tiny.json").read_text())
    del data["data"][0]["paragraphs"][0]["qas"][0]["question"]
    return _file(tmp, "noq.json", json.dumps(data))


def _alpaca_bad(tmp: Path) -> str:
    return _file(tmp, "alpaca.json", json.dumps([{"instruction": "x", "output": 5}] * 3))


def _space_file(tmp: Path, params: dict) -> str:
    return _file(tmp, "space.yaml", yaml.safe_dump({"params": params}))


# (id, argv builder(tmp) -> list[str], words the message must hold)
ROWS = [
    ("no such sweep file", lambda t: ["sweep", str(t / "nope.yaml")], ["nope.yaml", "file not found"]),
    ("not YAML", lambda t: ["sweep", _file(t, "x.yaml", "a: [1,\n")], ["x.yaml", "not valid YAML"]),
    ("a list, not a mapping", lambda t: ["sweep", _file(t, "x.yaml", "- 1\n")], ["expected a mapping"]),
    ("unknown top-level key", lambda t: ["sweep", _sweep(t, colour="red")], ["`colour`", "unknown key", "red"]),
    ("unknown model key", lambda t: ["sweep", _sweep(t, model__size=3)], ["`model.size`", "unknown key"]),
    ("model missing its name", lambda t: ["sweep", _sweep(t, model__name_or_path=_DELETE)], ["`model.name_or_path`", "missing"]),
    ("4 bits with a full fine-tune", lambda t: ["sweep", _sweep(t, model__finetune="full", model__quantization_bits=4)], ["quantization_bits=4", "finetune='full'"]),
    ("LoRA rank 0", lambda t: ["sweep", _sweep(t, model__lora={"r": 0})], ["`model.lora.r`", "0"]),
    ("LoRA dropout 1", lambda t: ["sweep", _sweep(t, model__lora={"dropout": 1.0})], ["`model.lora.dropout`", "1.0"]),
    ("unknown task", lambda t: ["sweep", _sweep(t, model__task="summarize")], ["`model.task`", "summarize"]),
    ("bits 3", lambda t: ["sweep", _sweep(t, model__quantization_bits=3)], ["`model.quantization_bits`", "3"]),
    ("stride over half a window", lambda t: ["sweep", _sweep(t, data__doc_stride=64)], ["doc_stride=64", "max_seq_length=128"]),
    ("window too short", lambda t: ["sweep", _sweep(t, data__max_seq_length=16)], ["`data.max_seq_length`", "16"]),
    ("eval fraction 1.5", lambda t: ["sweep", _sweep(t, data__eval_fraction=1.5)], ["`data.eval_fraction`", "1.5"]),
    ("negative learning rate", lambda t: ["sweep", _sweep(t, train__learning_rate=-1)], ["`train.learning_rate`", "-1"]),
    ("two warmups", lambda t: ["sweep", _sweep(t, train__warmup_ratio=0.1, train__warmup_steps=5)], ["warmup_ratio=0.1", "warmup_steps=5"]),
    ("fp32 with 16-bit weights", lambda t: ["sweep", _sweep(t, model__quantization_bits=16, train__precision="fp32")], ["`train.precision`", "quantization_bits=16"]),
    ("unknown precision", lambda t: ["sweep", _sweep(t, train__precision="fp8")], ["`train.precision`", "fp8"]),
    ("checkpoint every 0 steps", lambda t: ["sweep", _sweep(t, train__checkpoint_steps=0)], ["`train.checkpoint_steps`", "0"]),
    ("1.5 GPUs a worker", lambda t: ["sweep", _sweep(t, resources__gpus_per_worker=1.5)], ["gpus_per_worker=1.5"]),
    ("max_failures -2", lambda t: ["sweep", _sweep(t, resources__max_failures=-2)], ["`resources.max_failures`", "-2"]),
    ("unknown objective", lambda t: ["sweep", _sweep(t, objectives=[{"metric": "peak_memory", "mode": "min"}])], ["`objectives[0].metric`: unknown metric", "but got 'peak_memory'; did you mean `peak_memory_mb`?"]),
    ("objective twice", lambda t: ["sweep", _sweep(t, objectives=[{"metric": "eval_f1", "mode": "max"}] * 2)], ["distinct metrics"]),
    ("objective mode up", lambda t: ["sweep", _sweep(t, objectives=[{"metric": "eval_f1", "mode": "up"}])], ["mode", "up"]),
    ("an objective the task never reports", lambda t: ["sweep", _sweep(t, model__task="instruction", data__path=str(ASSETS / "alpaca_tiny.json"))], ["never reports", "eval_f1", "instruction"]),
    ("unknown sampler", lambda t: ["sweep", _sweep(t, search__sampler="cmaes")], ["`search.sampler`", "cmaes"]),
    ("zero trials", lambda t: ["sweep", _sweep(t, search__num_samples=0)], ["`search.num_samples`", "0"]),
    ("space file missing", lambda t: ["sweep", _sweep(t, search__space="nope_space.yaml")], ["search-space file not found", "nope_space.yaml"]),
    ("unknown axis", lambda t: ["sweep", _sweep(t, search__space={"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})], ["`search.space.params.lr`", "unknown axis", "'lr'"]),
    ("misspelt axis", lambda t: ["sweep", _sweep(t, search__space={"params": {"learnig_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})], ["`search.space.params.learnig_rate`", "did you mean `learning_rate`?"]),
    ("misspelt key", lambda t: ["sweep", _sweep(t, train__learnig_rate=1e-4)], ["`train.learnig_rate`", "unknown key", "did you mean `learning_rate`?"]),
    ("log axis from 0", lambda t: ["sweep", _sweep(t, search__space={"params": {"learning_rate": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}})], ["learning_rate", "low"]),
    ("low above high", lambda t: ["sweep", _sweep(t, search__space={"params": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}})], ["low=0.1", "high=0.01"]),
    ("bad axis in a space file", lambda t: ["sweep", _sweep(t, search__space=_space_file(t, {"lora_r": {"type": "int", "low": 8, "high": 2}}))], ["space.yaml", "lora_r"]),
    ("initial point off the space", lambda t: ["sweep", _sweep(t, search__initial_points=[{"lora_r": 8}])], ["initial_points[0].lora_r", "not an axis"]),
    ("initial point's axis misspelt", lambda t: ["sweep", _sweep(t, search__initial_points=[{"learning_rat": 1e-3}])], ["`search.initial_points[0].learning_rat`", "did you mean `learning_rate`?"]),
    ("initial point outside its axis's range", lambda t: ["sweep", _sweep(t, search__initial_points=[{"learning_rate": 0.5}])], ["`search.initial_points[0].learning_rate`", "low <= value <= high", "got 0.5"]),
    ("initial point not among the choices", lambda t: ["sweep", _sweep(t, search__space={"params": {"lora_r": {"type": "categorical", "choices": [4, 8]}}}, search__initial_points=[{"lora_r": 12}])], ["`search.initial_points[0].lora_r`", "[4, 8]", "got 12"]),
    ("warmup steps with a warmup_ratio axis", lambda t: ["sweep", _sweep(t, train__warmup_steps=5, search__space={"params": {"warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1}}})], ["sweep.yaml", "`params.warmup_ratio`", "warmup_ratio=0.0", "warmup_steps=5"]),
    ("an LSTM with a LoRA axis", lambda t: ["sweep", _sweep(t, model__finetune="full", model__architecture="bilstm_attention", search__space={"params": {"lora_r": {"type": "int", "low": 4, "high": 16}}})], ["`params.lora_r`", "bilstm_attention", "lora_r=4", "finetune='lora'"]),
    ("a model axis naming a missing folder", lambda t: ["sweep", _sweep(t, search__space={"params": {"model": {"type": "categorical", "choices": ["./no-model"]}}})], ["`params.model`", "`model.name_or_path`", "./no-model"]),
    ("bad sweep name", lambda t: ["sweep", _sweep(t, name="my sweep")], ["`name`", "my sweep"]),
    ("local data file missing", lambda t: ["sweep", _sweep(t, data__path="./nope.json")], ["`data.path`", "nope.json", "no such file"]),
    ("the quickstart without its model and data", lambda t: ["sweep", str(ROOT / "sweeps" / "quickstart.yaml")], ["quickstart.yaml", "2 errors", "`model.name_or_path`", "'models/all-MiniLM-L6-v2'", "scripts/stage_minilm.sh models", "`data.path`", "'data/squad/dev-v1.1.json.gz'", "scripts/get_data.sh", "curl -fL https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json | gzip > data/squad/dev-v1.1.json.gz", "data.path=rajpurkar/squad data.split=validation"]),
    ("local model folder missing", lambda t: ["sweep", _sweep(t, model__name_or_path="./no-model")], ["`model.name_or_path`", "no-model"]),
    ("models/x before staging", lambda t: (Path("models").mkdir(), ["sweep", _sweep(t, model__name_or_path="models/all-MiniLM-L6-v2")])[1], ["`model.name_or_path`", "models/all-MiniLM-L6-v2"]),
    ("hub id not in the offline cache", lambda t: ["sweep", _sweep(t, model__name_or_path="no-such-org/no-such-model")], ["`model.name_or_path`", "no-such-org/no-such-model", "HF_HUB_OFFLINE"]),
    ("truncated .gz data", lambda t: ["sweep", _sweep(t, data__path=_truncated_gz(t))], ["cut.json.gz", "cannot read"]),
    ("a question without its text", lambda t: ["sweep", _sweep(t, data__path=_squad_missing_question(t))], ["noq.json", "question"]),
    ("Alpaca output not a string", lambda t: ["sweep", _sweep(t, model__task="instruction", data__path=_alpaca_bad(t), objectives=[{"metric": "eval_loss", "mode": "min"}])], ["alpaca.json", "`output`", "5"]),
    ("override without =", lambda t: ["sweep", _sweep(t), "train.max_steps"], ["train.max_steps", "expected dotted.key=value"]),
    ("override into a value", lambda t: ["sweep", _sweep(t), "train.max_steps.x=1"], ["train.max_steps", "is a value"]),
    ("override of an unknown key", lambda t: ["sweep", _sweep(t), "train.colour=red"], ["`train.colour`", "unknown key"]),
    ("resume with nothing to resume", lambda t: ["sweep", _sweep(t), "--resume"], ["--resume", "no sweep state"]),
    ("pareto constraint malformed", lambda t: ["pareto", "x", "--constraint", "memory < lots"], ["`--constraint`", "memory < lots"]),
    ("pareto constraint not finite", lambda t: ["pareto", "x", "--constraint", "peak_memory_mb <= inf"], ["`--constraint`", "inf"]),
    ("pareto constraint unknown metric", lambda t: ["pareto", "x", "--constraint", "vram <= 8000"], ["unknown metric 'vram'"]),
    ("pareto with no MLflow store here", lambda t: ["pareto", "some-sweep"], ["no MLflow store", "some-sweep"]),
    ("pareto unknown axis", lambda t: ["pareto", "x", "--x", "vram"], ["`--x`", "vram"]),
    ("submit to a malformed address", lambda t: ["submit", _sweep(t), "--address", "head:8265"], ["`--address`", "head:8265"]),
    ("submit to nobody", lambda t: ["submit", _sweep_model_inside(t), "--address", "http://127.0.0.1:9"], ["`--address`", "no Ray cluster answers"]),
    ("train with a bad trial file", lambda t: ["train", _trial(t, train__max_steps=0)], ["`train.max_steps`", "0"]),
    ("train given a sweep file", lambda t: ["train", _sweep(t)], ["sweep.yaml", "this is a sweep file", "`qa-ray sweep"]),
    ("validate given a trial file", lambda t: ["validate", _trial(t)], ["trial.yaml", "this is a trial file", "`qa-ray train"]),
    ("train --resume without checkpoints", lambda t: ["train", _file(t, "trial.yaml", yaml.safe_dump({k: v for k, v in _base().items() if k in ("model", "data", "train")} | {"output_dir": "out"})), "--resume"], ["--resume", "no checkpoint"]),
    ("constraint malformed", lambda t: ["sweep", _sweep(t, constraints=["memory < lots"])], ["`constraints[0]`", "memory < lots"]),
    ("constraint on a metric the task never reports", lambda t: ["sweep", _sweep(t, constraints=["eval_loss <= 2"])], ["`constraints[0]`", "never reports 'eval_loss'", "got 'eval_loss <= 2'"]),
    ("constraint flag malformed", lambda t: ["sweep", _sweep(t), "--constraint", "peak_memory_mb = 8000"], ["`--constraint`", "peak_memory_mb = 8000"]),
    ("constraint flag unknown metric", lambda t: ["sweep", _sweep(t), "--constraint", "vram <= 8000"], ["`--constraint`", "'vram'"]),
    ("scheduler grace not positive", lambda t: ["sweep", _sweep(t, search__scheduler={"type": "mo_asha", "grace": 0})], ["`search.scheduler.grace`", "0"]),
    ("scheduler unknown type", lambda t: ["sweep", _sweep(t, search__scheduler={"type": "hyperband", "grace": 3})], ["`search.scheduler.type`", "hyperband"]),
    ("scheduler reduction factor 1", lambda t: ["sweep", _sweep(t, search__scheduler={"grace": 3, "reduction_factor": 1})], ["`search.scheduler.reduction_factor`", "1"]),
    ("mo_asha given memory_aware's fields", lambda t: ["sweep", _sweep(t, search__scheduler={"type": "mo_asha", "grace": 3, "noise_floor": 2.0, "memory_slack": 0.1})], ["`search.scheduler`", "`noise_floor`, `memory_slack`", "type 'mo_asha'", "noise_floor=2.0"]),
    ("scheduler on an unknown time attribute", lambda t: ["sweep", _sweep(t, search__scheduler={"grace": 3, "time_attr": "epochs"})], ["`search.scheduler.time_attr`", "epochs"]),
    ("distillation axes without a teacher", lambda t: ["sweep", _sweep(t, search__space={"params": {"distill_alpha": {"type": "float", "low": 0.1, "high": 0.9}}})], ["`search.space`", "train.distill"]),
    ("distillation alpha out of range", lambda t: ["sweep", _sweep(t, train__distill={"teacher": str(ASSETS / "wordpiece"), "alpha": 1.5})], ["`train.distill.alpha`", "1.5"]),
    ("distillation teacher not there", lambda t: ["sweep", _sweep(t, train__distill={"teacher": "./no-teacher"})], ["`train.distill.teacher`", "./no-teacher"]),
    ("distillation teacher trial unnamed", lambda t: ["sweep", _sweep(t, train__distill={"teacher": "sweep:bert-base"})], ["train.distill", "sweep:SWEEP/TRIAL", "sweep:bert-base"]),
    ("distillation teacher from no store", lambda t: ["sweep", _sweep(t, train__distill={"teacher": "sweep:bert-base/trial-1"})], ["`train.distill.teacher`", "no MLflow store", "bert-base"]),
    ("search space whose only LoRA rank is 0", lambda t: ["sweep", _sweep(t, search__space={"params": {"lora_r": {"type": "categorical", "choices": [0]}}})], ["sweep.yaml", "`params.lora_r`", "`model.lora.r`", "got 0"]),
    ("LoRA rank range from 0", lambda t: ["sweep", _sweep(t, search__space={"params": {"lora_r": {"type": "int", "low": 0, "high": 8}}})], ["`params.lora_r`", "greater than 0", "got 0"]),
    ("storage_path under a file", lambda t: ["sweep", _sweep(t, storage_path=_file(t, "a-file", "x") + "/runs")], ["sweep.yaml", "`storage_path`", "a-file/runs", "is not a folder"]),
    ("storage_path on a read-only file system", lambda t: ["sweep", _sweep(t, storage_path="/proc/qa-ray-runs")], ["`storage_path`", "/proc/qa-ray-runs", "not writable"]),
    ("tracking URI of an unknown scheme", lambda t: ["sweep", _sweep(t, tracking__tracking_uri="sqlite3:///mlflow.db")], ["sweep.yaml", "`tracking.tracking_uri`", "sqlite3:///mlflow.db", "'sqlite'"]),
    ("tracking URI flag of an unknown scheme", lambda t: ["sweep", _sweep(t), "--tracking-uri", "mlflow://host"], ["`--tracking-uri`", "mlflow://host"]),
    ("score with bad predictions", lambda t: ["score", str(ASSETS / "squad_v1_tiny.json"), _file(t, "p.json", "[1, 2]")], ["p.json"]),
]  # fmt: skip


@pytest.mark.parametrize("argv, words", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_naming_it_and_creates_nothing(
    argv, words, tmp_path, monkeypatch, capsys
):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = argv(tmp_path)
    before = set(Path(".").iterdir())
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)
    created = {p.name for p in set(Path(".").iterdir()) - before}
    assert not created & {"mlflow.db", "runs", "mlruns", "out"}, created
    assert not ray.is_initialized()


@pytest.mark.parametrize("flag", ["--budgets"])
@pytest.mark.parametrize("value", ["8000,lots", "0", "-1,8000", "nan"])
def test_bad_budgets_exit_2_naming_the_value(flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in (["sweep", _sweep(tmp_path)], ["pareto", "x"]):
        with pytest.raises(SystemExit) as info:
            main([*command, f"{flag}={value}"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and repr(value) in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_table_covers_at_least_40_bad_inputs():
    assert len(ROWS) >= 40
