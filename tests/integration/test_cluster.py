"""Multi-node Ray on one machine: a sweep submitted as a Ray job to a two-node cluster, logging to
a real ``mlflow server``; and Ray's autoscaler adding worker nodes for a sweep and removing them."""

import shutil
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from qa_ray.cli import main
from qa_ray.metrics import TAG_NODE_ID
from qa_ray.tracking.runs import child_runs, find_parent_run
from tests.cluster import LocalCluster
from tests.dashboard import mlflow_server
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path):
    with mlflow_server(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "mlflow.log"
    ) as url:
        yield url


def _check_sweep_in_mlflow(url: str, n: int) -> set[str]:
    """Every trial FINISHED under one parent with its Pareto artifacts; returns the node ids."""
    parent = find_parent_run(url, "tiny-sweep")
    children = child_runs(url, parent)
    assert len(children) == n
    assert all(c.info.status == "FINISHED" for c in children)
    arts = {a.path for a in MlflowClient(url).list_artifacts(parent, "pareto")}
    assert {"pareto/pareto.html", "pareto/pareto.png", "pareto/trials.csv"} <= arts
    return {c.data.tags[TAG_NODE_ID] for c in children}


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_submitted_sweep_spreads_over_two_nodes(
    tiny_model_dir, tmp_path, server, capsys, s3_bucket, monkeypatch
):
    """Two nodes that share no disk: the trials and the sweep's state go to a bucket (a real S3
    API server on loopback), as on a cluster, and both nodes read and write it. The model is a
    local folder under the working dir's models/, named relative to it: it travels with the
    job (models/ is otherwise left behind)."""
    wd = tmp_path / "repo"  # what `qa-ray submit` uploads as the job's working_dir
    wd.mkdir()
    shutil.copytree(tiny_model_dir("bert"), wd / "models" / "bert")
    monkeypatch.chdir(wd)
    sweep, _ = tiny_sweep(wd, [Path("models/bert")], num_samples=2, tracking_uri=server)
    cluster = LocalCluster(tmp_path, ["--num-cpus=2", "--num-gpus=0"])
    try:
        cluster.add_node("--num-cpus=2", "--num-gpus=0")
        nodes = cluster.wait_for_nodes(2)
        # Each trial's worker takes both CPUs of a node and two trials run at once: one per node.
        argv = [
            "submit", str(sweep), "resources.cpus_per_worker=2", f"storage_path=s3://{s3_bucket}/runs",
            "--address", cluster.dashboard_url, "--working-dir", str(wd), "--job-id", "tiny-1",
        ]  # fmt: skip
        rc = main(argv)
        out = capsys.readouterr().out
        assert rc == 0, out + cluster.logs()
        assert "submitted job tiny-1" in out and "[qa-ray] 2/2 done" in out
        assert main(["job", "status", "tiny-1", "--address", cluster.dashboard_url]) == 0
        assert "tiny-1: SUCCEEDED" in capsys.readouterr().out
        assert main(["job", "logs", "tiny-1", "--address", cluster.dashboard_url]) == 0
        assert "MLflow parent run" in capsys.readouterr().out
    finally:
        cluster.close()
    used = _check_sweep_in_mlflow(server, 2)
    assert used == {n.node_id for n in nodes}, (used, nodes)
    import boto3

    keys = [
        o["Key"]
        for page in boto3.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=s3_bucket, Prefix="runs/tiny-sweep/")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("experiment_state.json") or "experiment_state" in k for k in keys), keys
    assert any(k.startswith("runs/tiny-sweep/qa_ray_state/") for k in keys), keys


def test_submit_rejects_bad_input_before_the_cluster(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {name_or_path: m}\ndata: {path: d.json}\nsearch: {num_samples: 0}\n"
    )
    # The address is never contacted: validation fails first.
    assert (
        main(
            ["submit", str(bad), "--address", "http://127.0.0.1:9", "--working-dir", str(tmp_path)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(bad) in err and "num_samples" in err


def _fake_cluster_config(gcs_address: str) -> dict:
    """Ray's fake multi-node provider: 'launching' a node starts a raylet on this machine."""
    return {
        "cluster_name": "fake",
        "max_workers": 2,
        "idle_timeout_minutes": 0.1,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            # The provider only starts raylets: no SSH updaters, no launch-config hashing.
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": 2, "object_store_memory": 200 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.mark.slow  # Ray's autoscaler launching and idling out nodes: `pytest -m slow`
def test_autoscaler_adds_worker_nodes_for_a_sweep_and_removes_them(
    tiny_model_dir, tmp_path, server, capsys
):
    from ray._private.services import get_node_ip_address

    from tests.cluster import node_env
    from tests.dashboard import _free_port

    port = _free_port()
    config = tmp_path / "fake_cluster.yaml"
    config.write_text(yaml.safe_dump(_fake_cluster_config(f"{get_node_ip_address()}:{port}")))
    wd = tmp_path / "repo"
    wd.mkdir()
    sweep, _ = tiny_sweep(wd, [tiny_model_dir("bert")], num_samples=2, tracking_uri=server)
    cluster = LocalCluster(
        tmp_path,
        ["--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config}"],
        env=node_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1"),
        gcs_port=port,
    )
    try:
        (head,) = cluster.wait_for_nodes(1)
        # The driver runs here and joins the cluster (`qa-ray sweep --address`), not as a job:
        # the fake provider's nodes share the head's session dir, so each would unpack a job's
        # working_dir over the one the others' workers run in. Real nodes have disks of their own
        # (the two-node test above submits a job).
        try:
            rc = main(["sweep", str(sweep), "resources.cpus_per_worker=2", "--address",
                       cluster.gcs_address])  # fmt: skip
        finally:
            ray.shutdown()
        assert rc == 0, capsys.readouterr().out + cluster.logs()
        used = _check_sweep_in_mlflow(server, 2)
        assert head.node_id not in used  # the head has no CPUs: trials ran on added nodes
        # idle_timeout_minutes = 0.1: the added nodes go once the sweep has ended.
        deadline = time.monotonic() + 120
        while len(cluster.alive_nodes()) > 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert [n.node_id for n in cluster.alive_nodes()] == [head.node_id]
    finally:
        cluster.close()
