"""The README's table of shipped sweeps says what each sweep file's resources ask for."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cpus_per_trial_and_trials_per_gpu_match_each_sweep_file():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if m and (ROOT / "sweeps" / f"{m.group(1)}.yaml").is_file():
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[m.group(1)] = (cells[5], cells[6])
    assert set(rows) == {p.stem for p in (ROOT / "sweeps").glob("*.yaml")}
    for name, (cpus, per_gpu) in rows.items():
        r = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text()).get("resources", {})
        per_trial = r.get("cpus_per_worker", 1.0) * r.get("num_workers", 1)
        assert cpus == f"{per_trial:g}", name
        gpus = r.get("gpus_per_worker", 0)
        if not gpus:
            assert per_gpu == "no GPU", name
        else:
            n = round(1 / gpus)
            assert per_gpu == f"{n} ({n * per_trial:g} CPU cores a GPU)", name
