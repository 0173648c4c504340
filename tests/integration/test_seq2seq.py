"""Seq2seq QA (T5) on a tiny random-init T5 (CPU, no hub; learning in full / LoRA / 8-bit /
4-bit is the task-contract test): decoder labels are the answer, and decode -> extract -> score
gives EM/F1 through ``qa-ray train``."""

import pytest
import yaml

from qa_ray.cli import main
from qa_ray.config.trial import TrialConfig
from qa_ray.models.build import build_tokenizer
from tests.helpers import trial_dict

pytestmark = pytest.mark.integration


def _setup(tiny_model_dir, tmp_path, finetune="full", bits=32, **over):
    cfg = TrialConfig.model_validate(
        trial_dict(tiny_model_dir("t5"), tmp_path, model__task="seq2seq", **over)
    )
    mcfg = cfg.model.model_copy(update={"finetune": finetune, "quantization_bits": bits})
    return cfg, mcfg, build_tokenizer(mcfg)


def test_train_cli_runs_a_seq2seq_lora_trial(tiny_model_dir, tmp_path, capsys):
    cfg = trial_dict(
        tiny_model_dir("t5"),
        tmp_path,
        model__task="seq2seq",
        model__finetune="lora",
        data__max_eval_examples=8,
        data__max_answer_length=4,
    )
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert "step 4 " in capsys.readouterr().out
