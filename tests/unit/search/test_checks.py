"""What a sweep could sample, checked before Ray starts: each axis at its ends and choices, and
each initial point, as a whole trial config, cross-field rules included."""

from __future__ import annotations

import pytest

from qa_ray.config.files import validate_model
from qa_ray.config.trial import TrialConfig
from qa_ray.search.checks import axis_errors, initial_point_errors
from qa_ray.search.space import SearchSpace


def _params(params: dict) -> dict:
    return validate_model(SearchSpace, {"params": params}, "space.yaml").params


def _base(**blocks) -> dict:
    raw = {"model": {"name_or_path": "m"}, "data": {"path": "d"}}
    for name, fields in blocks.items():
        raw[name] = {**raw.get(name, {}), **fields}
    return TrialConfig.model_validate(raw).model_dump()


WARMUP = {"type": "float", "low": 0.0, "high": 0.1}
LORA_R = {"type": "int", "low": 4, "high": 16}


def test_a_rule_between_a_field_and_an_axis_is_broken_at_every_end():
    (low, high) = axis_errors(_params({"warmup_ratio": WARMUP}), _base(train={"warmup_steps": 5}))
    assert low.startswith("`search.space`: `params.warmup_ratio`: a trial sampled at ")
    assert "(warmup_ratio=0.0) is invalid" in low and "(warmup_ratio=0.1) is invalid" in high
    assert "set `warmup_ratio` or `warmup_steps`, not both" in low
    assert "warmup_steps=5" in low
    assert axis_errors(_params({"warmup_ratio": WARMUP}), _base()) == []


def test_an_lstm_refuses_a_lora_axis_but_not_its_own():
    lstm = _base(model={"architecture": "bilstm_attention"})
    errors = axis_errors(_params({"lora_r": LORA_R}), lstm)
    assert len(errors) == 1  # one reason, both ends named
    assert "`params.lora_r`" in errors[0] and "bilstm_attention" in errors[0]
    assert "(lora_r=4, finetune='lora') or (lora_r=16, finetune='lora')" in errors[0]
    own = {"lstm_hidden_size": {"type": "categorical", "choices": [64, 128]}}
    assert axis_errors(_params(own), lstm) == []
    # a LoRA axis on a transformer that may be LoRA is fine
    assert axis_errors(_params({"lora_r": LORA_R}), _base()) == []


def test_couplings_are_applied_as_suggest_applies_them():
    # 4 bits imply LoRA: `finetune: full` is never sampled with them, so it is no error
    kbit = _base(model={"quantization_bits": 4, "finetune": "lora"})
    finetune = {"finetune": {"type": "categorical", "choices": ["full", "lora"]}}
    assert axis_errors(_params(finetune), kbit) == []
    bits = {"quantization_bits": {"type": "categorical", "choices": [4, 16]}}
    assert axis_errors(_params(bits), _base()) == []  # 4 bits with full: LoRA is implied
    # pruning needs 16/32-bit weights: only the 4-bit choice is refused
    (error,) = axis_errors(_params(bits), _base(model={"prune": {"heads": 0.1}}))
    assert "(quantization_bits=4, finetune='lora') is invalid" in error and "`prune`" in error


def test_a_field_rule_is_named_with_its_field_and_value():
    (error,) = axis_errors(_params({"lora_dropout": {"type": "float", "low": 0.0, "high": 1.0}}),
                           _base())  # fmt: skip
    assert "`params.lora_dropout`" in error and "`model.lora.dropout`" in error
    assert error.endswith("but got 1.0")


def test_a_model_axis_naming_a_missing_local_folder(tmp_path):
    params = _params({"model": {"type": "categorical", "choices": [str(tmp_path), "./gone"]}})
    (error,) = axis_errors(params, _base())
    assert "`params.model`" in error and "(model='./gone')" in error and "no such file" in error


def test_the_base_configs_own_errors_are_not_repeated():
    raw = {"model": {"name_or_path": "m"}, "data": {"path": "d"}, "train": {"learning_rate": -1}}
    assert axis_errors(_params({"warmup_ratio": WARMUP}), raw) == []


def test_distillation_axes_need_a_teacher():
    (error,) = axis_errors(_params({"distill_alpha": {"type": "float", "low": 0.1, "high": 0.9}}),
                           _base())  # fmt: skip
    assert "`params.distill_alpha` needs `train.distill`" in error


@pytest.mark.parametrize(
    "point, expected",
    [
        ({"learning_rate": 0.5}, ["`search.initial_points[0].learning_rate`",
                                  "(low=0.0001, high=0.01), but got 0.5"]),
        ({"lora_r": 12}, ["`search.initial_points[0].lora_r`", "choices [4, 8], but got 12"]),
        ({"keep_layers": 2.5}, ["`search.initial_points[0].keep_layers`",
                                "must be an integer, but got 2.5"]),
        ({"learning_rat": 1e-3}, ["not an axis of the search space", "did you mean `learning_rate`?"]),
        ({"warmup_ratio": 0.05}, ["`search.initial_points[0]`: a trial at (warmup_ratio=0.05)",
                                  "not both"]),
    ],
)  # fmt: skip
def test_initial_points_are_checked_against_their_axes(point, expected):
    params = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "lora_r": {"type": "categorical", "choices": [4, 8]},
        "keep_layers": {"type": "int", "low": 1, "high": 4},
        "warmup_ratio": WARMUP,
    }
    base = _base(train={"warmup_steps": 5})
    (error,) = initial_point_errors([point], _params(params), sorted(params), base)
    for words in expected:
        assert words in error, error


def test_a_good_initial_point_passes():
    params = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    assert initial_point_errors([{"learning_rate": 1e-3}], _params(params), ["learning_rate"],
                                _base()) == []  # fmt: skip
