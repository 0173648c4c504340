"""cluster.yaml: valid for Ray's own cluster launcher, and shaped as the README promises."""

from pathlib import Path

import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_schema():
    # What `ray up` does before it touches AWS: fill in the provider defaults, then validate
    # against Ray's ray-schema.json (raises on any unknown or mistyped field).
    validate_config(prepare_config(_config()))


def test_head_commands_start_mlflow_then_ray_with_the_private_uri(tmp_path):
    """The head's start commands run in bash against stub `ray`, `mlflow`, `hostname` and
    `pkill` that record what they were called with: an MLflow server (in the background) on
    every interface with its store under $HOME, and `ray start --head` with the head's
    private address as MLFLOW_TRACKING_URI, which the workers inherit and log to."""
    import os
    import stat
    import subprocess

    cfg = _config()
    bin_dir, home, calls = tmp_path / "bin", tmp_path / "home", tmp_path / "calls"
    bin_dir.mkdir()
    home.mkdir()
    stubs = {
        "ray": 'echo "ray $* | MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI" >> "$CALLS"',
        "mlflow": 'echo "mlflow $*" >> "$CALLS"',
        "hostname": 'echo "10.0.3.7 172.17.0.1"',
        "pkill": "exit 1",  # nothing to kill on a fresh head
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    # `ulimit -n 65536` needs a privilege a test machine may not give: a no-op here.
    # The bucket, as a user names it in setup_commands' first line (the one place).
    bucket = cfg["setup_commands"][0].replace("YOUR-BUCKET", "my-results")
    script = "ulimit() { :; }\n" + "\n".join([bucket, *cfg["head_start_ray_commands"]])
    script += "\nwait\n"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
           "CALLS": str(calls)}  # fmt: skip
    subprocess.run(["bash", "-e", "-c", script], env=env, check=True, timeout=30)
    lines = calls.read_text().splitlines()
    server = next(i for i, line in enumerate(lines) if line.startswith("mlflow server"))
    head = next(i for i, line in enumerate(lines) if line.startswith("ray start --head"))
    args = lines[server].split()
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--port") + 1] == "5000"
    assert args[args.index("--backend-store-uri") + 1] == f"sqlite:///{home}/mlflow/mlflow.db"
    assert (
        args[args.index("--artifacts-destination") + 1] == "s3://my-results/qa-ray/mlflow-artifacts"
    )
    assert lines[head].endswith("MLFLOW_TRACKING_URI=http://10.0.3.7:5000")
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] == 0


def test_workers_have_gpus_and_scale_to_zero():
    cfg = _config()
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert len(workers) >= 2
    for name, node in workers.items():
        assert node["resources"]["GPU"] >= 1, name
        assert node["min_workers"] == 0, name
        assert node["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5")), name
    assert cfg["idle_timeout_minutes"] > 0


def test_nodes_run_this_ray_version_and_this_checkout():
    cfg = _config()
    assert f"ray:{ray.__version__}-" in cfg["docker"]["image"]
    assert cfg["file_mounts"] == {"~/qa-ray": "."}
    assert any("pip install" in c and "qa-ray" in c for c in cfg["setup_commands"])


def test_each_gpu_node_type_offers_its_own_device_memory_for_packing():
    """resources.pack_by_memory packs trials by the nodes' gpu_memory_mb: the 24 GB and 48 GB
    types each declare what their device reports (nvidia-smi memory.total, MiB)."""
    types_ = _config()["available_node_types"]
    offered = {
        name: t["resources"]["gpu_memory_mb"] / t["resources"]["GPU"]
        for name, t in types_.items()
        if t["resources"].get("GPU")
    }
    assert offered == {"gpu_a10g_24gb": 23028, "gpu_l40s_48gb": 46068}


def test_the_bucket_is_named_once_and_ray_up_stops_on_the_placeholder(tmp_path):
    """YOUR-BUCKET is written in one command of the file (setup_commands' first); left as it
    is, the head's set-up stops `ray up` with a message saying where to name it, before an
    MLflow server starts that would fail on its first artifact."""
    import os
    import subprocess

    cfg = _config()
    commands = [c for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in cfg.get(key, [])]  # fmt: skip
    naming = [c for c in commands if "QA_RAY_BUCKET=YOUR-BUCKET" in c]
    assert naming == [cfg["setup_commands"][0]]
    assert not [c for c in cfg["head_start_ray_commands"] if "YOUR-BUCKET" in c]
    env = {**os.environ, "HOME": str(tmp_path)}
    script = "\n".join([cfg["setup_commands"][0], *cfg["head_setup_commands"]])
    done = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "replace YOUR-BUCKET in setup_commands with your results bucket" in done.stderr


def test_the_nodes_install_the_tested_versions():
    (install,) = [c for c in _config()["setup_commands"] if "pip install" in c]
    assert "torch==2.13.0" in install and '-c "$HOME/qa-ray/constraints.txt"' in install
