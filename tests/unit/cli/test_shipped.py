"""``qa-ray sweeps list|copy``: the shipped sweeps and spaces, installed with the package."""

from __future__ import annotations

from pathlib import Path

from qa_ray.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_list_names_every_shipped_sweep_and_space(capsys):
    assert main(["sweeps", "list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    expected = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    expected += sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert names == expected
    assert "  quickstart" in out and "Quickstart: all-MiniLM-L6-v2" in out


def test_copy_writes_the_file_and_the_copy_validates_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no search_spaces/ here: the shipped space is read
    name = "albert_base_squad_v1_full_lora_f1_memory"
    assert main(["sweeps", "copy", name, "."]) == 0
    copied = tmp_path / f"{name}.yaml"
    assert copied.read_text() == (ROOT / "sweeps" / f"{name}.yaml").read_text()
    assert f"qa-ray sweep {name}.yaml" in capsys.readouterr().out
    assert main(["validate", str(copied)]) == 0, capsys.readouterr().err
    # a space by its kind, when a sweep has the same name
    assert main(["sweeps", "copy", "search_spaces/quickstart", "space.yaml"]) == 0
    assert (tmp_path / "space.yaml").read_text().startswith("# Quickstart space")


def test_copy_refuses_to_overwrite_and_unknown_names_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    assert main(["sweeps", "copy", "quickstart", "mine.yaml"]) == 2
    assert "`DEST`: 'mine.yaml' exists" in capsys.readouterr().err
    assert (tmp_path / "mine.yaml").read_text() == "name: mine\n"
    assert main(["sweeps", "copy", "quickstart", "mine.yaml", "--force"]) == 0
    assert main(["sweeps", "copy", "bert-large", "."]) == 2
    err = capsys.readouterr().err
    assert "`NAME`" in err and "'bert-large'" in err and "quickstart" in err
    assert main(["sweeps", "copy", "quickstart", "no/such/dir/x.yaml"]) == 2
    assert "`DEST`" in capsys.readouterr().err


def test_the_package_data_holds_the_shipped_files():
    """A wheel holds what qa_ray/shipped links to: pyproject's package data names both."""
    text = (ROOT / "pyproject.toml").read_text()
    data = text.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    for kind in ("sweeps", "search_spaces"):
        link = ROOT / "qa_ray" / "shipped" / kind
        assert link.resolve() == (ROOT / kind).resolve()
        assert f'"shipped/{kind}/*.yaml"' in data
