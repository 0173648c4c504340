"""Search-space files: Optuna's invariants, distributions, coupled axes."""

import optuna
import pytest

from qa_ray.config.files import validate_model
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError
from qa_ray.search.space import SearchSpace, apply_params, suggest, to_distributions


def _space(params, **kw):
    return validate_model(SearchSpace, {"params": params, **kw}, "space.yaml")


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"type": "float", "low": 0.1, "high": 0.01},
            "`low <= high` must hold, but got (low=0.1, high=0.01)",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "log": True},
            "`low > 0` must hold for `log: true`",
        ),
        ({"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "exclusive"),
        ({"type": "int", "low": 1, "high": 8, "log": True, "step": 2}, "exclusive"),
        ({"type": "int", "low": 0, "high": 8, "log": True}, "`low > 0`"),
        ({"type": "categorical", "choices": []}, "at least 1"),
        ({"type": "categorical", "choices": [8, 8]}, "unique"),
        ({"type": "gaussian", "low": 0, "high": 1}, "does not match any of the expected tags"),
    ],
)
def test_every_invariant_has_a_failing_example(entry, message):
    with pytest.raises(ConfigError) as e:
        _space({"learning_rate": entry})
    assert message in str(e.value)
    assert "params.learning_rate" in str(e.value)


def test_unknown_axis_and_bad_choices_reported_together():
    with pytest.raises(ConfigError) as e:
        _space(
            {
                "lr": {"type": "float", "low": 1e-5, "high": 1e-3},
                "quantization_bits": {"type": "categorical", "choices": [4, 3]},
            }
        )
    msg = str(e.value)
    assert "`params.lr`: unknown axis" in msg
    assert "quantization_bits.choices` must be a subset" in msg


def test_effective_batch_rules():
    bs = {"type": "categorical", "choices": [8, 12]}
    with pytest.raises(ConfigError, match="must divide `effective_batch_size`"):
        _space({"per_device_batch_size": bs}, effective_batch_size=32)
    with pytest.raises(ConfigError, match="exclusive"):
        _space(
            {
                "per_device_batch_size": {"type": "categorical", "choices": [8]},
                "gradient_accumulation_steps": {"type": "int", "low": 1, "high": 4},
            },
            effective_batch_size=32,
        )


def test_to_distributions():
    d = to_distributions(
        _space(
            {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "lora_r": {"type": "int", "low": 4, "high": 64, "log": True},
                "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
                "quantization_bits": {"type": "categorical", "choices": [4, 8, 16]},
            }
        )
    )
    assert d["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert d["lora_r"] == optuna.distributions.IntDistribution(4, 64, log=True)
    assert d["warmup_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.2, step=0.05)
    assert d["quantization_bits"] == optuna.distributions.CategoricalDistribution([4, 8, 16])


def _base():
    return TrialConfig.model_validate(
        {
            "model": {"name_or_path": "m"},
            "data": {"path": "d"},
            "resources": {"num_workers": 2},
        }
    )


def test_coupled_axes_as_optuna_sees_them():
    space = _space(
        {
            "quantization_bits": {"type": "categorical", "choices": [4, 8, 16]},
            "finetune": {"type": "categorical", "choices": ["full", "lora"]},
            "lora_r": {"type": "int", "low": 4, "high": 16},
            "per_device_batch_size": {"type": "categorical", "choices": [4, 8]},
        },
        effective_batch_size=32,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        t = study.ask()
        constants = suggest(t, space, _base())
        p = t.params
        bits = p["quantization_bits"]
        finetune = constants.get("finetune", p.get("finetune"))
        if bits in (4, 8):
            assert "finetune" not in p and constants["finetune"] == "lora"
        if finetune == "full":
            assert "lora_r" not in p  # rank not sampled without LoRA
        else:
            assert "lora_r" in p
        # 2 workers: accumulation = 32 / (batch * 2)
        assert constants["gradient_accumulation_steps"] == 32 // (p["per_device_batch_size"] * 2)
        seen.add((bits, finetune))
        study.tell(t, 0.0)
    assert {(4, "lora"), (8, "lora"), (16, "full"), (16, "lora")} <= seen


def test_apply_params_sets_fields_and_alpha_multiple():
    base = _base().model_dump()
    out = apply_params(
        base,
        {
            "learning_rate": 3e-4,
            "lora_r": 8,
            "lora_alpha_multiple": 2,
            "quantization_bits": 4,
            "finetune": "lora",
        },
    )
    cfg = TrialConfig.model_validate(out)
    assert cfg.train.learning_rate == 3e-4 and cfg.model.lora.r == 8
    assert cfg.model.lora.alpha == 16 and cfg.model.quantization_bits == 4
    assert base["model"]["lora"]["r"] == 8 and base["train"]["learning_rate"] == 5e-5  # not mutated


def test_pruning_axes_fill_an_absent_prune_block_with_its_defaults():
    base = _base().model_dump()
    assert base["model"]["prune"] is None
    cfg = TrialConfig.model_validate(apply_params(base, {"prune_heads": 0.33, "prune_ffn": 0.5}))
    assert cfg.model.prune is not None
    assert (cfg.model.prune.heads, cfg.model.prune.ffn, cfg.model.prune.batches) == (0.33, 0.5, 8)


def test_axis_values_resolve_fixed_axes_and_drop_lora_axes_without_lora():
    from qa_ray.search.space import axis_values

    base = {
        "model": {"name_or_path": "m", "finetune": "full", "quantization_bits": 32},
        "train": {"learning_rate": 1e-4, "per_device_batch_size": 16},
    }
    full = axis_values(base, {"learning_rate": 3e-4})
    assert full["quantization_bits"] == 32 and full["finetune"] == "full"  # fixed, not sampled
    assert full["learning_rate"] == 3e-4  # sampled wins
    assert "lora_r" not in full and "lora_alpha_multiple" not in full
    lora = axis_values(base, {"quantization_bits": 4, "finetune": "lora", "lora_r": 8})
    assert (lora["quantization_bits"], lora["lora_r"], lora["lora_alpha_multiple"]) == (4, 8, 2)
    assert base["model"]["finetune"] == "full"  # the base is not changed
