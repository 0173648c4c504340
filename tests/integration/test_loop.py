"""The training loop's behaviour on one and several workers, its precision rules and its
checkpoints, on tiny random-init models (CPU, no hub). GPU-only paths are emulated where a CPU
can show them (a process group that, like NCCL, serves only CUDA tensors)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from qa_ray.cli import main
from qa_ray.models import pruning
from qa_ray.training.loop import train_loop_per_worker
from tests.helpers import RecordingSession, cuda_only_group_rank, ddp_rank, trial_dict

pytestmark = pytest.mark.integration


def _cfg(tiny_model_dir, tmp_path, kind="bert", **over):
    over = {"model__dropout": 0.0, "train__save_checkpoints": False, **over}
    return trial_dict(tiny_model_dir(kind), tmp_path, **over)


def _spawn(fn, world_size: int, tmp_path, *args) -> list[dict]:
    init = tmp_path / "pg-init"
    mp.spawn(fn, args=(world_size, str(init), *args, str(tmp_path)), nprocs=world_size, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world_size)]


# ---- many workers ----------------------------------------------------------------------------


def test_two_workers_stay_identical_and_match_one_worker_with_twice_the_batch(
    tiny_model_dir, tmp_path
):
    """2 gloo ranks x batch 4 x accumulation 2 against 1 worker x batch 8 x accumulation 2,
    same seed: the ranks' parameters agree after every step, the step losses equal the single
    worker's, and DDP all-reduced once per optimizer step, not once per micro-batch."""
    common = {
        "train__max_steps": 3,
        "train__gradient_accumulation_steps": 2,
        "train__learning_rate": 1e-3,
        "train__checkpoint_steps": 1,
        "train__save_checkpoints": True,
        "data__max_eval_examples": 4,
    }
    two = _cfg(tiny_model_dir, tmp_path / "two", train__per_device_batch_size=4, **common)
    ranks = _spawn(ddp_rank, 2, tmp_path, two)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-12)
    assert ranks[0]["syncs"] == ranks[1]["syncs"] == 3  # one all-reduce per step (1 bucket)
    lr = [[r["lr"] for r in rank["reports"]] for rank in ranks]
    assert lr[0] == lr[1]

    one = RecordingSession()
    train_loop_per_worker(
        _cfg(tiny_model_dir, tmp_path / "one", train__per_device_batch_size=8, **common), one
    )
    two_losses = [r["train_loss"] for r in ranks[0]["reports"]]
    assert two_losses == pytest.approx(one.losses(), rel=1e-4, abs=1e-5)


def test_a_collective_goes_where_the_backend_serves_it(tmp_path):
    """NCCL (Ray Train's backend on GPU workers) serves CUDA tensors only, so the loop's
    collectives (stop decisions, horizon, peak memory) must not be CPU tensors there."""
    ranks = _spawn(cuda_only_group_rank, 2, tmp_path)
    for r, out in enumerate(ranks):
        assert out["backend"] == "cuda:gloo"
        assert out["cpu_tensor"].startswith("rejected")  # the emulation is faithful
        assert out["worker_on_cuda"] == f"cuda:{r}"
        assert out["worker_on_cpu"].startswith("rejected")


def test_a_partial_accumulation_ends_each_epoch_and_epoch_is_reported_right(
    tiny_model_dir, tmp_path
):
    """Micro-batches left at the end of an epoch are stepped, not merged into the next epoch:
    6 micro-batches with accumulation 4 make 2 steps an epoch (4 + 2)."""
    from qa_ray.config.trial import TrialConfig
    from qa_ray.data.squad import load_train_eval
    from qa_ray.models.build import build_tokenizer
    from qa_ray.tasks import extractive

    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        data__max_train_examples=10,
        data__drop_windows_missing_answer=True,
        data__max_eval_examples=2,
        train__per_device_batch_size=2,
        train__gradient_accumulation_steps=4,
        train__num_epochs=2,
        train__eval_steps=2,
    )
    cfg["train"].pop("max_steps")
    trial = TrialConfig.model_validate(cfg)
    train, _ = load_train_eval(trial.data)
    windows = extractive.train_features(train[:10], build_tokenizer(trial.model), trial.data)
    assert len(windows) in (11, 12)  # 6 micro-batches of 2
    session = RecordingSession()
    final = train_loop_per_worker(cfg, session)
    assert [(r["step"], r["epoch"]) for r in session.reports] == [(2, 1.0), (4, 2.0)]
    assert final["step"] == 4


def test_no_training_sequence_is_a_clear_error(tiny_model_dir, tmp_path):
    cfg = trial_dict(
        tiny_model_dir("llama", causal=True),
        tmp_path,
        model__task="instruction",
        data__path=str(tmp_path / "one.json"),
        data__max_seq_length=32,  # every Alpaca prompt is longer
    )
    (tmp_path / "one.json").write_text(
        json.dumps([{"instruction": "Say hi " * 20, "output": "hi"}] * 4)
    )
    with pytest.raises(ValueError, match="max_seq_length"):
        train_loop_per_worker(cfg, RecordingSession())


# ---- precision -------------------------------------------------------------------------------


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_a_16_bit_full_fine_tune_updates_every_weight_the_32_bit_one_does(tiny_model_dir, tmp_path):
    """bf16 weights updated in place lose small updates to rounding; a 16-bit full fine-tune
    keeps fp32 master weights (bf16 autocast), so at lr 1e-5 it changes what fp32 changes, and
    its checkpoint holds those changes."""
    from qa_ray.config.trial import ModelConfig
    from qa_ray.models.build import build_model

    start = {
        k: v.float()
        for k, v in build_model(
            ModelConfig(name_or_path=str(tiny_model_dir("bert"))), torch.device("cpu")
        )
        .state_dict()
        .items()
    }
    changed = {}
    for bits in (32, 16):
        out = tmp_path / f"b{bits}"
        cfg = _cfg(
            tiny_model_dir, out, model__quantization_bits=bits, train__max_steps=10,
            train__learning_rate=1e-5, train__warmup_steps=0, train__save_checkpoints=True,
            train__per_device_batch_size=4,
        )  # fmt: skip
        session = RecordingSession(keep_checkpoints=str(out / "ckpt"))
        train_loop_per_worker(cfg, session)
        saved = _weights(out / "ckpt" / "step_000010")
        assert all(v.dtype == torch.float32 for v in saved.values())
        changed[bits] = {k: (v != start[k]) for k, v in saved.items() if k in start and v.ndim == 2}
    n32 = sum(int(c.sum()) for c in changed[32].values())
    both = sum(int((changed[16][k] & c).sum()) for k, c in changed[32].items())
    assert n32 > 10_000
    assert both >= 0.99 * n32, (both, n32)


def test_kbit_trials_keep_frozen_weights_in_the_compute_dtype_and_train_in_fp32(tiny_model_dir):
    """peft's prepare_model_for_kbit_training upcast every non-quantized weight to fp32
    (embeddings, LM head); qa-ray keeps frozen weights in the compute dtype and only what is
    trained in fp32; 4-bit layers compute in the trial's dtype."""
    from qa_ray.config.trial import ModelConfig
    from qa_ray.models.build import build_model

    mcfg = ModelConfig(
        name_or_path=str(tiny_model_dir("llama", causal=True)),
        task="generative",
        finetune="lora",
        quantization_bits=4,
    )
    model = build_model(mcfg, torch.device("cpu"), torch.bfloat16)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {
        n: p.dtype
        for n, p in model.named_parameters()
        if not p.requires_grad and type(p).__name__ != "Params4bit"
    }
    assert trained and set(trained.values()) == {torch.float32}
    assert any("embed_tokens" in n for n in frozen)
    assert set(frozen.values()) == {torch.bfloat16}, frozen
    linear4 = [m for m in model.modules() if type(m).__module__.startswith("bitsandbytes")]
    assert linear4 and all(m.compute_dtype == torch.bfloat16 for m in linear4)


# ---- checkpoints and resume ------------------------------------------------------------------


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_model_dir, tmp_path):
    """Stopped after step 4 of 8 (dropout on: RNG state matters) and resumed from that
    checkpoint: the same losses, learning rates and scores as one run through, and training
    continues at step 5."""
    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        model__dropout=0.1,
        train__max_steps=8,
        train__eval_steps=4,
        train__save_checkpoints=True,
        train__per_device_batch_size=4,
        train__checkpoint_steps=2,
    )
    whole = RecordingSession()
    through = train_loop_per_worker(cfg, whole)

    cut = RecordingSession(keep_checkpoints=str(tmp_path / "ckpt8"))
    with pytest.raises(_Stop):  # killed right after the step-4 report and its checkpoint
        train_loop_per_worker(cfg, _StopAfter(cut, step=4))
    rest = RecordingSession(resume_from=str(tmp_path / "ckpt8" / "step_000004"))
    resumed = train_loop_per_worker(cfg, rest)

    assert [r["step"] for r in rest.reports] == [6, 8]
    for key in ("train_loss", "lr", "eval_f1", "eval_exact"):
        assert resumed[key] == pytest.approx(through[key], rel=1e-5, abs=1e-6), key
    by_step = {r["step"]: r for r in whole.reports}
    assert rest.reports[0]["train_loss"] == pytest.approx(by_step[6]["train_loss"], rel=1e-5)


def test_a_run_resumed_from_its_final_checkpoint_reports_its_final_result_again(
    tiny_model_dir, tmp_path
):
    """A sweep's driver killed as a trial ends: the orphaned Ray Train run finishes, and the
    resumed sweep restores it from its last checkpoint. The loop has no step left; it reports
    that checkpoint's final result again (Tune fails a trial that reports nothing)."""
    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        train__max_steps=4,
        train__eval_steps=4,
        train__save_checkpoints=True,
        train__checkpoint_steps=2,
    )
    first = RecordingSession(keep_checkpoints=str(tmp_path / "ckpt"))
    through = train_loop_per_worker(cfg, first)
    rest = RecordingSession(resume_from=str(tmp_path / "ckpt" / "step_000004"))
    again = train_loop_per_worker(cfg, rest)

    assert [r["step"] for r in rest.reports] == [4]
    assert rest.reports[0]["final_report"] == 1.0
    # with the run's curve, for the points a killed driver never received
    sent = rest.reports[0]["curve_so_far"]
    assert [p["step"] for p in sent] == [2, 4]
    assert [p["train_loss"] for p in sent] == [r["train_loss"] for r in first.reports]
    for key in ("train_loss", "eval_f1", "eval_exact", "peak_memory_mb"):
        assert rest.reports[0][key] == again[key] == pytest.approx(through[key]), key


class _Stop(Exception):
    pass


class _StopAfter:
    """Delegates to a session, then raises once ``step`` was reported (a killed worker)."""

    def __init__(self, inner: RecordingSession, step: int):
        self.inner, self.step = inner, step
        self.world_rank, self.world_size, self.device = 0, 1, inner.device

    def prepare(self, model):
        return self.inner.prepare(model)

    def latest_checkpoint(self):
        return None

    def save_results(self, metrics, predictions):
        self.inner.save_results(metrics, predictions)

    def report(self, metrics, checkpoint_dir):
        self.inner.report(metrics, checkpoint_dir)
        if metrics["step"] >= self.step:
            raise _Stop


def test_train_resume_continues_from_the_newest_checkpoint(tiny_model_dir, tmp_path, capsys):
    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        model__finetune="lora",
        train__max_steps=4,
        train__eval_steps=2,
        train__save_checkpoints=True,
        train__checkpoints_to_keep=2,
    )
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]
    newest = tmp_path / "out" / "checkpoints" / "step_000004"
    assert (newest / "adapter_model.safetensors").is_file()  # LoRA: adapter only
    assert not (newest / "model.safetensors").exists()
    assert {"training_state.json", "training_state.pt"} <= {p.name for p in newest.iterdir()}
    capsys.readouterr()

    # Longer now: resumed at step 4, it goes on to 6.
    assert main(["train", str(path), "train.max_steps=6", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "step 6 " in out and "step 2 " not in out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["step"] == 6
    # A checkpoint of another model is bad input, named.
    assert main(["train", str(path), "model.finetune=full", "--resume"]) == 2
    assert "model.finetune" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / "nothing"))))
    assert main(["train", str(empty), "--resume"]) == 2


# ---- static pruning by importance ------------------------------------------------------------


def _not_again(*args):
    raise AssertionError("importance measured again on resume")


def test_a_pruned_lora_trial_resumes_with_the_heads_and_units_it_kept(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Importance is measured once: the checkpoint records what was kept (pruning.json), and
    the resumed run rebuilds those shapes and ends where an uninterrupted one does."""
    cfg = _cfg(tiny_model_dir, tmp_path, model__finetune="lora",
               model__prune={"heads": 0.5, "ffn": 0.5, "batches": 2}, train__max_steps=4,
               train__save_checkpoints=True, train__checkpoint_steps=2,
               train__per_device_batch_size=4, data__max_eval_examples=4)  # fmt: skip
    whole = RecordingSession()
    through = train_loop_per_worker(cfg, whole)
    cut = RecordingSession(keep_checkpoints=str(tmp_path / "ckpt"))
    with pytest.raises(_Stop):
        train_loop_per_worker(cfg, _StopAfter(cut, step=2))
    saved = json.loads((tmp_path / "ckpt" / "step_000002" / "pruning.json").read_text())
    assert [len(h) for h in saved["heads"]] == [1, 1]  # tiny bert: 2 layers x 2 heads
    assert [len(u) for u in saved["ffn"]] == [64, 64]  # of 128 units
    rest = RecordingSession(resume_from=str(tmp_path / "ckpt" / "step_000002"))
    monkeypatch.setattr(pruning, "importance", _not_again)
    resumed = train_loop_per_worker(cfg, rest)
    assert resumed["total_params"] == through["total_params"]
    for key in ("train_loss", "eval_f1"):
        assert resumed[key] == pytest.approx(through[key], rel=1e-5, abs=1e-6), key


def test_every_rank_prunes_the_same_heads_and_units(tiny_model_dir, tmp_path):
    """Each rank measures importance on its own batches; the scores are summed over ranks, so
    all prune alike (otherwise DDP refuses the differently shaped replicas)."""
    cfg = _cfg(tiny_model_dir, tmp_path, model__prune={"heads": 0.5, "ffn": 0.5, "batches": 2},
               train__max_steps=2, train__per_device_batch_size=4,
               data__max_eval_examples=4)  # fmt: skip
    ranks = _spawn(ddp_rank, 2, tmp_path, cfg)
    assert ranks[0]["pruned"] is not None and ranks[0]["pruned"] == ranks[1]["pruned"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-12)
