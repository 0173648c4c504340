"""The GPU check: qa-ray's memory and speed on one CUDA GPU, in one call, with no network.

    bash benchmarks/gpu_check.sh                    # on the GPU machine: report in $OUT or ./gpu_check_out
    python benchmarks/gpu_check.py --cpu --out /tmp/gpu_check   # tiny shapes on the CPU (the tests)

Four steps, each printed as it ends, then written to ``OUT/gpu_check_report.txt`` with the
command, the machine and the date:

a. the GPU test tier, ``python -m pytest tests/gpu -q`` (pytest comes from the wheels below);
b. random-initialised models at the shapes of the shipped sweeps (BERT-base, ALBERT-base-v2,
   Llama-3.2-1B extractive and generative: their published config.json, ``tests/hf_cache.py``),
   a few configurations per method x bits, each trained 3 steps and evaluated once by
   :func:`qa_ray.training.loop.train_loop_per_worker` in a process of its own (as a Ray worker
   is), its ``peak_memory_mb`` beside the prediction of qa-ray's memory model (its prior,
   :class:`qa_ray.search.memory.MemoryModel`), and per family and method the median
   ``|predicted - measured| / measured`` against the 15 % target; 8 and 4 bits only where
   bitsandbytes imports (else printed as skipped, with the reason);
c. two packed trials at once on the GPU, each capped at its request
   (``resources.gpu_memory_mb``: the loop calls ``cap_device_memory``), each reporting its own
   peak beside its peak alone in step b;
d. bf16 training throughput of BERT-base at sequence 384 (tokens/s and model FLOPs
   utilisation against the card's peak dense bf16 FLOPs, :data:`PEAK_BF16_TFLOPS`) in qa-ray's
   loop beside a bare PyTorch loop of the same model and batch.

What it needs: Python 3.12 with torch, transformers, peft, accelerate, pyarrow, scipy, psutil
and pyyaml installed. The rest (pydantic, datasets with pandas, pytest, and what they need) is
carried in ``benchmarks/gpu_wheels/`` and installed, without the network, into ``OUT/site``
when the machine lacks it or has too old a version. The loop runs in-process with its
``LocalSession`` (no Ray, Optuna or MLflow is imported). About 6 minutes on an H100; a
deadline (``--deadline``, 420 s) skips the measurements left when it passes.

``--cpu`` runs the same steps on tiny shapes (2 layers, 64 dims) on the CPU, where
``peak_memory_mb`` is the worker's peak RSS: ``tests/unit/test_gpu_check.py`` runs it, so the
script cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
REPORT = "gpu_check_report.txt"
TARGET = 0.15  # median |predicted - measured| / measured, per family and method

# What the script asks of the carried packages (pyproject's ranges); their own requirements
# follow from their wheels.
NEEDS = ("pydantic>=2.7,<3", "datasets>=5.0,<6", "pytest>=8")

# Peak dense bf16 tensor TFLOPS (no sparsity), from NVIDIA's datasheets; the first name found
# in the device's name wins. The A10G is AWS's variant of the A10: the A10's figure.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.05),
    ("A10G", 125.0),
)


# ---- the carried wheels ----------------------------------------------------------------------


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(wheel: Path) -> tuple[str, str]:
    dist, version = wheel.name.split("-")[:2]
    return _canon(dist), version


def _wheel_requires(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA (extras and markers kept)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if
            line.startswith("Requires-Dist:")]  # fmt: skip


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_wheels(
    wheels: list[Path], installed=_installed, needs: tuple[str, ...] = NEEDS
) -> tuple[list[Path], list[str]]:
    """The carried wheels to install, and the requirements nothing here meets.

    A wheel is installed when something needs its distribution (``needs``, or a wheel being
    installed) and the machine lacks it or has a version outside what is needed. A
    requirement on a distribution that is not carried (pyarrow, numpy) and that the machine
    does not meet is returned as a line to print: the check may still fail on it.
    """
    from packaging.requirements import Requirement

    carried = {_wheel_name(w)[0]: w for w in wheels}
    chosen: dict[str, Path] = {}
    unmet: list[str] = []
    todo = [Requirement(r) for r in needs]
    while todo:
        req = todo.pop(0)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _canon(req.name)
        if name in chosen:
            continue
        have = installed(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if name in carried and req.specifier.contains(_wheel_name(carried[name])[1], True):
            chosen[name] = carried[name]
            todo += [Requirement(r) for r in _wheel_requires(carried[name])]
        else:
            unmet.append(f"{req} (installed: {have or 'none'})")
    return sorted(chosen.values()), unmet


def install_wheels(site: Path) -> list[str]:
    """Installs the carried wheels this machine lacks into ``site`` (no network) and puts it
    first on ``sys.path`` and on the children's ``PYTHONPATH``; returns the report's lines."""
    wheels = sorted(WHEELS.glob("*.whl"))
    chosen, unmet = plan_wheels(wheels)
    lines = []
    if chosen:
        site.mkdir(parents=True, exist_ok=True)
        if importlib.util.find_spec("pip") is not None:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                 "--target", str(site), *map(str, chosen)],
                check=True,
            )  # fmt: skip
        else:  # a wheel is a zip of its import tree: what pip does here, less the scripts
            for w in chosen:
                zipfile.ZipFile(w).extractall(site)
        lines.append(f"installed from benchmarks/gpu_wheels into {site}: " +
                     ", ".join(w.name for w in chosen))  # fmt: skip
    else:
        lines.append("carried wheels: none needed (this machine has every package)")
    lines += [f"WARNING unmet requirement: {u}" for u in unmet]
    paths = [str(site), str(ROOT)]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*paths, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return lines


def check_imports() -> None:
    """Imports everything the check uses (the parent's and the children's modules)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import qa_ray.search.memory  # noqa: F401
    import qa_ray.tasks.extractive  # noqa: F401
    import qa_ray.tasks.generative  # noqa: F401
    import qa_ray.training.loop  # noqa: F401
    import qa_ray.training.memory  # noqa: F401
    import qa_ray.training.session  # noqa: F401
    import tests.hf_cache  # noqa: F401


# ---- models and data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A shipped sweep's model: its published config, tokenizer and sweep settings."""

    label: str
    config: str  # a dict of tests/hf_cache.py
    tokenizer: str  # a folder of tests/assets
    task: str
    seq: int
    eval_batch: int
    checkpointing: bool = False
    answer: int = 30


FAMILIES = {
    "bert": Family("BERT-base", "BERT_BASE_UNCASED", "wordpiece", "extractive", 384, 128),
    "albert": Family("ALBERT-base-v2", "ALBERT_BASE_V2", "wordpiece", "extractive", 384, 128),
    "llama": Family("Llama-3.2-1B", "LLAMA_32_1B", "bpe", "extractive", 512, 32, True),
    "llama-gen": Family(
        "Llama-3.2-1B generative", "LLAMA_32_1B", "bpe", "generative", 512, 32, True, 32
    ),
}
# Tiny shapes (--cpu): the same architectures, 2 layers of 64 dims, windows of 128 tokens.
_TINY = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 128, "vocab_size": 2008, "num_key_value_heads": 2, "head_dim": 32,
    "embedding_size": 32,
}  # fmt: skip
_TINY_DATA = {"seq": 128, "eval_batch": 8}
_BPE_SPECIAL = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # tests/assets/bpe


@dataclass(frozen=True)
class Measure:
    """One configuration of step b."""

    family: str
    finetune: str  # full | lora
    bits: int
    batch: int
    r: int = 16

    @property
    def name(self) -> str:
        method = "full" if self.finetune == "full" else f"lora r{self.r}"
        return f"{self.family} {method} {self.bits}-bit b{self.batch}"


MEASURES = [
    Measure("bert", "full", 16, 8), Measure("bert", "full", 16, 32),
    Measure("bert", "lora", 16, 16), Measure("bert", "lora", 8, 16),
    Measure("bert", "lora", 4, 32),
    Measure("albert", "full", 16, 16), Measure("albert", "lora", 16, 16),
    Measure("albert", "lora", 8, 16), Measure("albert", "lora", 4, 32),
    Measure("llama", "lora", 16, 8), Measure("llama", "lora", 8, 8),
    Measure("llama", "lora", 4, 8), Measure("llama", "lora", 4, 16, 64),
    Measure("llama-gen", "lora", 16, 8), Measure("llama-gen", "lora", 4, 16),
]  # fmt: skip
CPU_MEASURES = [
    Measure("bert", "full", 16, 8), Measure("albert", "lora", 16, 8),
    Measure("llama", "lora", 8, 4), Measure("llama-gen", "lora", 4, 4),
]  # fmt: skip
PACKED = (Measure("bert", "full", 16, 8), Measure("bert", "lora", 16, 16))
THROUGHPUT = Measure("bert", "full", 16, 32)


def model_folder(key: str, work: Path, device: str, tiny: bool) -> Path:
    """A random-initialised model at the family's shape, saved as ``save_pretrained`` does
    (the base model, bf16: the task's head is added when qa-ray loads it), with the test
    tokenizer (a small vocabulary inside the model's)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    from tests import hf_cache

    fam = FAMILIES[key]
    out = work / "models" / (("tiny-" if tiny else "") + fam.config.lower())
    if (out / "config.json").is_file():
        return out
    published = dict(getattr(hf_cache, fam.config))
    if fam.tokenizer == "bpe":
        published.update(_BPE_SPECIAL)
    if tiny:
        published.update({k: v for k, v in _TINY.items() if k in published})
    config = AutoConfig.for_model(**published)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    for f in (ROOT / "tests" / "assets" / fam.tokenizer).iterdir():
        shutil.copy(f, out / f.name)
    return out


def write_squad(path: Path, folder: Path, seq: int, n: int, seed: int) -> None:
    """A SQuAD v1.1 file whose every question and context fill one window of ``seq`` tokens
    exactly (as the extractive features cut them), so every batch is ``seq`` long."""
    from transformers import AutoTokenizer

    from qa_ray.tasks.extractive import no_answer_last

    tok = AutoTokenizer.from_pretrained(folder)
    words = sorted(
        {
            w
            for t in tok.get_vocab()
            if (w := t.lstrip("\u0120")).isalpha()
            and 3 <= len(w) <= 8
            and len(tok(" " + w, add_special_tokens=False).input_ids) == 1
        }  # fmt: skip
    )
    window = seq - (1 if no_answer_last(tok) else 0)
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        question = " ".join(rng.choices(words, k=6)) + " ?"
        context = rng.choices(words, k=window)
        while len(tok(question, " ".join(context)).input_ids) > window:
            context.pop()
        k = rng.randrange(len(context) - 3)
        answer = " ".join(context[k : k + 2])
        start = len(" ".join(context[:k])) + (1 if k else 0)
        qa = {"id": f"q{i}", "question": question,
              "answers": [{"text": answer, "answer_start": start}]}  # fmt: skip
        paragraphs.append({"context": " ".join(context), "qas": [qa]})
    data = {"version": "1.1", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data))


def family(key: str, tiny: bool) -> Family:
    return dataclasses.replace(FAMILIES[key], **_TINY_DATA) if tiny else FAMILIES[key]


def trial_config(
    m: Measure, fam: Family, folder: Path, data: Path, work: Path, device: str, **over
) -> dict:
    """The trial dict of a measurement: the family's sweep settings, 3 steps, one evaluation
    of ``eval_batch`` examples (one batch), no checkpoint."""
    name = re.sub(r"\W+", "-", m.name)
    cfg = {
        "name": name,
        "model": {
            "name_or_path": str(folder),
            "task": fam.task,
            "finetune": m.finetune,
            "quantization_bits": m.bits,
            "gradient_checkpointing": fam.checkpointing,
            "lora": {"r": m.r, "alpha": 2 * m.r},
        },  # fmt: skip
        "data": {
            "path": str(data / "train.json"),
            "eval_path": str(data / "eval.json"),
            "max_seq_length": fam.seq,
            "doc_stride": min(128, fam.seq // 4),
            "max_answer_length": fam.answer,
            "max_eval_examples": fam.eval_batch,
            "cache_dir": str(work / "features"),
        },  # fmt: skip
        "train": {
            "max_steps": 3 if device == "cuda" else 2,
            "per_device_batch_size": m.batch,
            "eval_batch_size": fam.eval_batch,
            "learning_rate": 1e-4,
            "precision": "bf16" if device == "cuda" else "auto",
            "progress_seconds": 0,
            "save_checkpoints": False,
            "device": device,
        },  # fmt: skip
        "output_dir": str(work / "trials" / name),
    }
    for key, value in over.items():
        block, _, name = key.partition("__")
        if name:
            cfg[block][name] = value
        else:
            cfg[block] = value
    return cfg


# ---- one trial in a process of its own -------------------------------------------------------


def run_child(spec: dict, result: Path) -> None:
    """The child's side: one trial through qa-ray's loop, in-process (its LocalSession)."""
    import torch

    from qa_ray.training.loop import train_loop_per_worker
    from qa_ray.training.session import LocalSession

    barrier = spec.get("barrier")

    class Session(LocalSession):
        """qa-ray's in-process session, keeping every report; with a barrier, the model is
        built and waits for the other trials' before any trains (packed trials overlap)."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.reports: list[dict[str, Any]] = []
            self.trained_from = time.time()

        def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
            if barrier:
                Path(barrier["dir"], spec["cfg"]["name"]).touch()
                deadline = time.time() + barrier["timeout"]
                while len(list(Path(barrier["dir"]).iterdir())) < barrier["n"]:
                    if time.time() > deadline:
                        raise TimeoutError("the other packed trial never built its model")
                    time.sleep(0.05)
            self.trained_from = time.time()
            return model

        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            super().report(metrics, checkpoint_dir)
            self.reports.append(metrics)

    cfg = spec["cfg"]
    session = Session(cfg["output_dir"], 1, torch.device(cfg["train"]["device"]))
    out = train_loop_per_worker(cfg, session)
    keep = (int, float, str)
    result.write_text(json.dumps({
        "metrics": {k: v for k, v in out.items() if isinstance(v, keep)},
        "reports": [{k: v for k, v in r.items() if isinstance(v, keep)} for r in session.reports],
        "trained_from": session.trained_from, "ended": time.time(),
    }))  # fmt: skip


def spawn(spec: dict, work: Path) -> tuple[subprocess.Popen, Path, Path]:
    name = spec["cfg"]["name"] + spec.get("suffix", "")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    spec_path, result, log = (
        work / "logs" / f"{name}.{ext}" for ext in ("spec.json", "json", "log")
    )
    spec_path.write_text(json.dumps(spec))
    result.unlink(missing_ok=True)
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_path), str(result)],
            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    return proc, result, log


def finish(proc: subprocess.Popen, result: Path, log: Path, timeout: float) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {timeout:.0f} s (log {log})"}
    if proc.returncode != 0 or not result.is_file():
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]} (log {log})"}
    return json.loads(result.read_text())


def run_trial(spec: dict, work: Path, timeout: float) -> dict:
    return finish(*spawn(spec, work), timeout)


# ---- the steps -------------------------------------------------------------------------------


@dataclass
class Check:
    args: argparse.Namespace
    work: Path
    device: str
    info: dict  # the GPU (gpu_info), empty on the CPU
    lines: list[str] = field(default_factory=list)
    folders: dict[str, Path] = field(default_factory=dict)
    solo: dict[str, dict] = field(default_factory=dict)  # measurement name -> its result
    started: float = field(default_factory=time.time)

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def left(self) -> float:
        return self.args.deadline - (time.time() - self.started)

    def setup(self, key: str) -> tuple[Path, Path]:
        """The family's model folder and data folder (built once)."""
        fam = family(key, self.args.cpu)
        if key not in self.folders:
            t0 = time.time()
            # In a child: CUDA memory this process held would count in every trial's reading.
            spec = {
                "key": key,
                "work": str(self.work),
                "device": self.device,
                "tiny": self.args.cpu,
            }
            built = _run_json(["--build", json.dumps(spec)], self.work, timeout=600)
            if "error" in built:
                raise RuntimeError(f"building {fam.label} failed: {built['error']}")
            folder = Path(built["folder"])
            data = self.work / "data" / f"{fam.tokenizer}-{fam.seq}"
            if not data.is_dir():
                data.mkdir(parents=True)
                n = 24 if self.args.cpu else 160
                write_squad(data / "train.json", folder, fam.seq, n, seed=1)
                write_squad(data / "eval.json", folder, fam.seq, fam.eval_batch, seed=2)
            self.folders[key] = folder
            self.say(f"  (built {folder.name} and its data in {time.time() - t0:.0f} s)")
        return self.folders[key], self.work / "data" / f"{fam.tokenizer}-{fam.seq}"

    def config(self, m: Measure, **over) -> dict:
        folder, data = self.setup(m.family)
        fam = family(m.family, self.args.cpu)
        return trial_config(m, fam, folder, data, self.work, self.device, **over)

    # a. the GPU test tier
    def tests(self) -> None:
        self.say("== a. the GPU test tier: python -m pytest tests/gpu -q")
        if importlib.util.find_spec("pytest") is None:
            self.say("  skipped: pytest is not importable")
            return
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT, capture_output=True, text=True, timeout=max(60.0, self.left()),
            # the tier needs no third-party plugin; one installed here may not import
            env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        )  # fmt: skip
        out = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        for i, ln in enumerate(out):
            if re.match(r"(FAILED|ERROR|SKIPPED)", ln) or i == len(out) - 1:
                self.say(f"  {ln}")
        if proc.returncode != 0:
            err = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
            self.say(f"  FAILED: exit {proc.returncode} {err[0][:200]}")
        self.say(f"  exit {proc.returncode}, {time.time() - t0:.0f} s")

    # b. predicted against measured
    def measure(self) -> None:
        from qa_ray.search.memory import MemoryModel

        self.say("== b. peak_memory_mb measured by qa-ray's loop beside the memory model's prior")
        bnb = _bitsandbytes()
        prior = MemoryModel(self.device)
        rows: list[tuple[Measure, float, float, dict]] = []
        header = f"  {'configuration':<38} {'predicted MB':>16} {'measured MB':>12} {'alloc MB':>9}  {'error':>7}  context"
        self.say(header)
        for m in CPU_MEASURES if self.args.cpu else MEASURES:
            if m.bits in (4, 8) and bnb is not None:
                self.say(f"  {m.name:<38} skipped: {bnb}")
                continue
            if self.left() < 30:
                self.say(
                    f"  {m.name:<38} skipped: out of time (--deadline {self.args.deadline:.0f} s)"
                )
                continue
            cfg = self.config(m)
            p = prior.predict(_validated(cfg))
            r = run_trial({"cfg": cfg}, self.work, timeout=min(240.0, self.left()))
            if "error" in r:
                self.say(
                    f"  {m.name:<38} {p.peak_mb:>8.0f} +- {p.sd_mb:<5.0f} FAILED: {r['error']}"
                )
                continue
            got = r["metrics"]
            peak = got["peak_memory_mb"]
            err = (p.peak_mb - peak) / peak
            self.solo[m.name] = r
            rows.append((m, p.peak_mb, peak, got))
            self.say(
                f"  {m.name:<38} {p.peak_mb:>8.0f} +- {p.sd_mb:<5.0f} {peak:>12.0f} "
                f"{got.get('peak_allocated_mb', 0):>9.0f}  {100 * err:>+6.1f}%  "
                f"{got.get('memory_context_source', 'RSS')}"
            )
        self.say("  median |predicted - measured| / measured, per family and method "
                 f"(target <= {100 * TARGET:.0f} %):")  # fmt: skip
        groups: dict[tuple[str, str], list[float]] = {}
        for m, pred, peak, _ in rows:
            groups.setdefault((FAMILIES[m.family].label, m.finetune), []).append(
                abs(pred - peak) / peak
            )
        for (fam, method), errs in groups.items():
            med = statistics.median(errs)
            verdict = "reached" if med <= TARGET else "NOT reached"
            self.say(f"    {fam:<26} {method:<5} {100 * med:5.1f} % over {len(errs)}: {verdict}")
        if rows:
            med = statistics.median(abs(p - k) / k for _, p, k, _ in rows)
            verdict = "reached" if med <= TARGET else "NOT reached"
            self.say(f"    {'all':<32} {100 * med:5.1f} % over {len(rows)}: {verdict}")

    # c. two packed trials
    def packed(self) -> None:
        from qa_ray.search.memory import MemoryModel

        self.say("== c. two packed trials at once on one device, each capped at its request")
        if self.left() < 60:
            self.say(f"  skipped: out of time (--deadline {self.args.deadline:.0f} s)")
            return
        prior = MemoryModel(self.device)
        barrier = self.work / "barrier"
        barrier.mkdir(exist_ok=True)
        for f in barrier.iterdir():
            f.unlink()
        running = []
        for m in PACKED:
            p = prior.predict(_validated(self.config(m)))
            # what the searcher asks for a packed trial (searcher.request_mb: z 2, margin 0.1)
            cap = float(int((p.peak_mb + 2 * p.sd_mb) * 1.1) + 1)
            cfg = self.config(m, resources={"gpu_memory_mb": cap, "gpus_per_worker": 0.5},
                              train__max_steps=10)  # fmt: skip
            spec = {"cfg": cfg, "suffix": "-packed",
                    "barrier": {"dir": str(barrier), "n": len(PACKED), "timeout": 120}}  # fmt: skip
            running.append((m, cap, spawn(spec, self.work)))
        results = [(m, cap, finish(*s, timeout=max(60.0, self.left()))) for m, cap, s in running]
        if self.device == "cuda":
            total = self.info["total_mb"]
            self.say(
                f"  caps sum to {sum(c for _, c, _ in results):.0f} MB of the device's {total:.0f}"
            )
        ok = [r for _, _, r in results if "error" not in r]
        if len(ok) == 2:
            both = min(r["ended"] for r in ok) - max(r["trained_from"] for r in ok)
            self.say(
                f"  both trained at once for {max(0.0, both):.1f} s (from the second model built)"
            )
        for m, cap, r in results:
            if "error" in r:
                self.say(f"  {m.name:<38} cap {cap:.0f} MB FAILED: {r['error']}")
                continue
            got = r["metrics"]
            alone = self.solo.get(m.name, {}).get("metrics", {}).get("peak_memory_mb")
            beside = (
                f"alone {alone:.0f} MB ({100 * (got['peak_memory_mb'] - alone) / alone:+.1f} %)"
                if alone
                else "alone: not measured"
            )
            self.say(
                f"  {m.name:<38} cap {cap:.0f} MB: own peak {got['peak_memory_mb']:.0f} MB "
                f"(allocated {got.get('peak_allocated_mb', 0):.0f}, context "
                f"{got.get('memory_context_source', 'RSS')}), {beside}"
            )

    # d. throughput
    def throughput(self) -> None:
        self.say(
            "== d. bf16 training throughput, BERT-base at sequence 384: qa-ray's loop and a bare loop"
        )
        if self.left() < 45:
            self.say(f"  skipped: out of time (--deadline {self.args.deadline:.0f} s)")
            return
        m = dataclasses.replace(THROUGHPUT, batch=8) if self.args.cpu else THROUGHPUT
        steps = 5 if self.args.cpu else 40
        cfg = self.config(m, train__max_steps=steps, train__progress_seconds=1e-6,
                          data__max_eval_examples=8)  # fmt: skip
        r = run_trial(
            {"cfg": cfg, "suffix": "-throughput"}, self.work, timeout=max(60.0, self.left())
        )
        spec = {"cfg": cfg, "steps": steps}
        bare = _run_json(["--bare", json.dumps(spec)], self.work, timeout=max(60.0, self.left()))
        seq = family(m.family, self.args.cpu).seq
        flops = bare.get("flops_per_token")
        peak, card = _peak_flops(self.info)
        self.say(f"  batch {m.batch} x {seq}, {steps} optimizer steps; model FLOPs/token "
                 f"{flops / 1e9:.2f} G (6 N + 12 L h s)" if flops else f"  bare loop FAILED: {bare.get('error')}")  # fmt: skip
        if "error" in r:
            self.say(f"  qa-ray's loop FAILED: {r['error']}")
        else:
            # Steady state: from the report after step 2 to the last (its train_seconds
            # exclude evaluations and reports); the loop's own figure includes the first steps.
            reps = [x for x in r["reports"] if x.get("step", 0) >= 2]
            a, b = reps[0], reps[-1]
            tps = (
                (b["step"] - a["step"]) * m.batch * seq / (b["train_seconds"] - a["train_seconds"])
            )
            whole = r["metrics"]["train_samples_per_second"] * seq
            self.say(f"  qa-ray's loop: {tps:,.0f} tokens/s from step {a['step']} to {b['step']}"
                     f"{_mfu(tps, flops, peak)} (its own train_samples_per_second: {whole:,.0f} tokens/s "
                     "over every step)")  # fmt: skip
        if "tokens_per_second" in bare:
            tps = bare["tokens_per_second"]
            self.say(f"  bare PyTorch loop: {tps:,.0f} tokens/s over steps {bare['timed_from']}-{steps}"
                     f"{_mfu(tps, flops, peak)}")  # fmt: skip
        self.say(f"  peak bf16: {card}")


def _validated(cfg: dict) -> dict:
    """The trial dict as the sweep hands it to the memory model: validated, defaults filled."""
    from qa_ray.config.trial import TrialConfig

    return TrialConfig.model_validate(cfg).model_dump()


def _mfu(tps: float, flops: float | None, peak: float | None) -> str:
    return f", MFU {100 * tps * flops / peak:.1f} %" if flops and peak else ""


def _peak_flops(info: dict) -> tuple[float | None, str]:
    if not info.get("name"):
        return None, "not applicable on the CPU (no MFU)"
    name = info["name"]
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOPS dense for {name!r} (table: {key})"
    return (
        None,
        f"{name!r} is not in the table ({', '.join(k for k, _ in PEAK_BF16_TFLOPS)}): no MFU",
    )


def _bitsandbytes() -> str | None:
    """Why 8 and 4 bits cannot run here, or None."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or its CUDA setup failing
        return f"bitsandbytes does not import ({type(exc).__name__}: {str(exc)[:80]})"
    return None


def _run_json(argv: list[str], work: Path, timeout: float) -> dict:
    out = work / "logs" / f"{argv[0].strip('-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log = out.with_suffix(".log")
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, __file__, *argv, "--result", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    return finish(proc, out, log, timeout)


def run_bare(spec: dict, result: Path) -> None:
    """A bare PyTorch loop of the same model and batch: from_pretrained, fp32 weights, bf16
    autocast, AdamW, clipping, random full-length windows already on the device."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    cfg = spec["cfg"]
    device = torch.device(cfg["train"]["device"])
    model = AutoModelForQuestionAnswering.from_pretrained(cfg["model"]["name_or_path"],
                                                          dtype=torch.float32).to(device)  # fmt: skip
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["learning_rate"])
    b, s = cfg["train"]["per_device_batch_size"], cfg["data"]["max_seq_length"]
    c = model.config
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 2000, (b, s), generator=g).to(device),
        "attention_mask": torch.ones(b, s, dtype=torch.long, device=device),
        "start_positions": torch.randint(0, s, (b,), generator=g).to(device),
        "end_positions": torch.randint(0, s, (b,), generator=g).to(device),
    }
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", dtype=torch.bfloat16))  # fmt: skip
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps, warm = spec["steps"], 3
    for step in range(steps):
        if step == warm:
            sync()
            t0 = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - t0
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n = sum(p.numel() for p in model.parameters()) - emb
    flops = 6 * n + 12 * c.num_hidden_layers * c.hidden_size * s
    result.write_text(json.dumps({
        "tokens_per_second": (steps - warm) * b * s / seconds, "timed_from": warm + 1,
        "flops_per_token": flops,
    }))  # fmt: skip


def gpu_info() -> dict:
    """The GPU, read in a child process: the parent never creates a CUDA context."""
    import torch

    if not torch.cuda.is_available():
        return {}
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "total_mb": p.total_memory / 2**20, "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}  # fmt: skip


def machine(device: str, info: dict) -> list[str]:
    import torch
    import transformers

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}, peft {_installed('peft')}, "
             f"bitsandbytes {_installed('bitsandbytes') or 'not installed'}, "
             f"{os.cpu_count()} CPUs, {platform.platform()}"]  # fmt: skip
    if device == "cuda":
        lines.insert(0, f"GPU: {info['name']}, {info['total_mb']:.0f} MB, CUDA {info['cuda']}, "
                        f"{info['count']} visible")  # fmt: skip
    else:
        lines.insert(0, "no GPU: --cpu, tiny shapes, peak_memory_mb is the peak RSS")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check_out", help="work folder and report")
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (the tests)")
    ap.add_argument("--steps", default="abcd", help="which steps to run (default abcd)")
    ap.add_argument("--deadline", type=float, default=420.0,
                    help="seconds after which measurements left are skipped")  # fmt: skip
    ap.add_argument("--imports-only", action="store_true", help="install wheels, import, exit")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--info", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: nothing is fetched
    if str(ROOT) not in sys.path:  # qa_ray and tests from this checkout (children: PYTHONPATH)
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        run_child(json.loads(Path(args.child[0]).read_text()), Path(args.child[1]))
        return 0
    if args.bare:
        run_bare(json.loads(args.bare), Path(args.result))
        return 0
    if args.build:
        b = json.loads(args.build)
        folder = model_folder(b["key"], Path(b["work"]), b["device"], b["tiny"])
        Path(args.result).write_text(json.dumps({"folder": str(folder)}))
        return 0
    if args.info:
        Path(args.result).write_text(json.dumps(gpu_info()))
        return 0
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    installed = install_wheels(work / "site")
    check_imports()
    if args.imports_only:
        print("\n".join(installed) + "\nimports: ok (qa-ray's loop, memory model, tasks)")
        return 0
    device = "cpu" if args.cpu else "cuda"
    info = {} if args.cpu else _run_json(["--info", "{}"], work, timeout=120)
    if device == "cuda" and not info.get("name"):
        print("no CUDA device is visible: run with --cpu for the tiny CPU check", file=sys.stderr)
        return 2
    check = Check(args, work, device, info)
    check.say("qa-ray GPU check (benchmarks/gpu_check.py)")
    check.say(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    check.say(f"date: {started:%Y-%m-%d %H:%M} UTC; git {_git_head()}")
    for line in [*machine(device, info), *installed]:
        check.say(line)
    steps = {"a": check.tests, "b": check.measure, "c": check.packed, "d": check.throughput}
    for s in args.steps:
        t0 = time.time()
        steps[s]()
        check.say(f"  ({time.time() - t0:.0f} s)")
    check.say(f"total {time.time() - check.started:.0f} s")
    (work / REPORT).write_text("\n".join(check.lines) + "\n")
    print(f"report: {work / REPORT}")
    return 0


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
