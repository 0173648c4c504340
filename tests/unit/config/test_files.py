"""Trial files: bad values named by field, every error at once, overrides, missing data."""

import pytest
import yaml

from qa_ray.cli import main
from qa_ray.config.files import apply_overrides, load_trial_config
from qa_ray.errors import ConfigError
from tests.helpers import ASSETS


def _write(tmp_path, data, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _trial(tmp_path):
    return {
        "model": {"name_or_path": str(tmp_path)},
        "data": {"path": str(ASSETS / "squad_v1_tiny.json")},
        "train": {"learning_rate": 1e-4},
    }


@pytest.mark.parametrize(
    "block, field, value, expected",
    [
        ("model", "quantization_bits", 3, "`model.quantization_bits`"),
        ("model", "finetune", "prefix", "`model.finetune`"),
        ("data", "doc_stride", 300, "doc_stride < max_seq_length / 2"),
        (
            "train",
            "learning_rate",
            -1,
            "`train.learning_rate`: Input should be greater than 0, but got -1",
        ),
        ("train", "warmup_steps", 10, "set `warmup_ratio` or `warmup_steps`, not both"),
        ("resources", "num_workers", 0, "`resources.num_workers`"),
        ("train", "bogus", 1, "`train.bogus`: unknown key"),
    ],
)
def test_bad_value_in_each_block_exits_2_naming_field(
    tmp_path, capsys, block, field, value, expected
):
    data = _trial(tmp_path)
    data.setdefault(block, {})[field] = value
    if field == "warmup_steps":
        data["train"]["warmup_ratio"] = 0.1
    path = _write(tmp_path, data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err


def test_all_errors_reported_together(tmp_path):
    data = _trial(tmp_path)
    data["train"].update(learning_rate=0, per_device_batch_size=0)
    data["model"]["quantization_bits"] = 4  # without lora
    with pytest.raises(ConfigError) as e:
        load_trial_config(_write(tmp_path, data))
    assert len(e.value.errors) == 3
    assert "needs `finetune: lora`" in str(e.value)


def test_overrides_validated_like_the_file(tmp_path):
    path = _write(tmp_path, _trial(tmp_path))
    cfg = load_trial_config(path, ["train.learning_rate=3e-4", "model.lora.r=4"])
    assert cfg.train.learning_rate == 3e-4 and cfg.model.lora.r == 4
    with pytest.raises(ConfigError, match="`train.lr`: unknown key"):
        load_trial_config(path, ["train.lr=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["novalue"])


def test_missing_local_data_is_caught_before_training(tmp_path, capsys):
    data = _trial(tmp_path)
    data["data"]["path"] = "nowhere/dev.json.gz"
    assert main(["train", str(_write(tmp_path, data))]) == 2
    assert (
        "`data.path`: no such file or folder, but got 'nowhere/dev.json.gz'"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "block, key, meant",
    [("train", "learnig_rate", "learning_rate"), ("model", "finetun", "finetune"),
     ("data", "max_seq_len", "max_seq_length"), (None, "resource", "resources")],
)  # fmt: skip
def test_a_misspelt_key_gets_a_did_you_mean(tmp_path, block, key, meant):
    data = _trial(tmp_path)
    (data.setdefault(block, {}) if block else data)[key] = 1
    with pytest.raises(ConfigError) as e:
        load_trial_config(_write(tmp_path, data))
    where = f"{block}.{key}" if block else key
    assert e.value.errors == [f"`{where}`: unknown key (value 1); did you mean `{meant}`?"]


def test_a_key_like_none_gets_no_guess(tmp_path):
    data = _trial(tmp_path)
    data["train"]["zzz"] = 1
    with pytest.raises(ConfigError) as e:
        load_trial_config(_write(tmp_path, data))
    assert e.value.errors == ["`train.zzz`: unknown key (value 1)"]


def test_a_bad_field_and_a_missing_file_are_reported_together(tmp_path):
    data = _trial(tmp_path)
    data["train"]["learning_rat"] = 1e-4
    data["data"]["path"] = "./nowhere.json"
    with pytest.raises(ConfigError) as e:
        load_trial_config(_write(tmp_path, data), ["novalue"])
    override, typo, missing = e.value.errors
    assert override == "override 'novalue': expected dotted.key=value"
    assert typo.startswith("`train.learning_rat`: unknown key")
    assert missing.startswith("`data.path`: no such file or folder, but got './nowhere.json'")


def test_a_sweep_file_given_to_train_says_to_run_sweep(tmp_path, capsys):
    data = _trial(tmp_path) | {"search": {"space": "search_spaces/quickstart.yaml"}}
    path = _write(tmp_path, data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"this is a sweep file (it has a `search` block): run `qa-ray sweep {path}`" in err
    assert "1 error" in err  # not the search block's unknown keys besides


@pytest.mark.parametrize(
    "loc, shown",
    [(("objectives", 0, "mode"), "objectives[0].mode"),
     (("search", "space", "function-wrap[_coherent_axes(), SearchSpace]", "params", "lora_r",
       "categorical", "choices"), "search.space.params.lora_r.choices"),
     (("search", "space", "params", "lr", "[key]"), "search.space.params.lr"),
     (("constraints", 2), "constraints[2]")],
)  # fmt: skip
def test_error_locations_read_as_the_file_is_written(loc, shown):
    from qa_ray.config.files import _format_error
    from qa_ray.sweep.config import SweepConfig

    err = {"loc": loc, "type": "value_error", "msg": "Value error, bad, but got 3", "input": 3}
    assert _format_error(err, SweepConfig) == f"`{shown}`: bad, but got 3"


def test_a_misspelt_key_in_an_optional_block_is_guessed():
    from qa_ray.config.files import _format_error
    from qa_ray.sweep.config import SweepConfig

    err = {"loc": ("search", "scheduler", "grac"), "type": "extra_forbidden", "msg": "", "input": 3}
    assert _format_error(err, SweepConfig) == (
        "`search.scheduler.grac`: unknown key (value 3); did you mean `grace`?"
    )
