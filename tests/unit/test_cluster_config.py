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


def test_head_serves_mlflow_and_exports_its_private_uri_before_ray_starts():
    cfg = _config()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head
    # Bound on every interface so `ray attach -p 5000` reaches it on the head's localhost; the
    # workers log to the private address.
    assert "--host 0.0.0.0" in head
    assert 'MLFLOW_TRACKING_URI="http://$(hostname -I' in head
    assert head.index("MLFLOW_TRACKING_URI") < head.index("ray start --head")
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
