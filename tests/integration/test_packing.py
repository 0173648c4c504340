"""Trials packed onto GPUs by predicted memory, on a real two-node Ray cluster on loopback that
declares GPUs and GPU memory this machine does not have (``resources.pack_by_memory``).

The nodes offer one "GPU" each and 2600 MB and 3900 MB of ``gpu_memory_mb``; the trials run
on the CPU (``train.device: cpu``, gloo) while Ray places their workers by what they ask for.
A thread polls Ray's State API for the alive Train workers all through the sweep: on every
snapshot the requests on a node sum to no more than its memory and its GPU, each worker asks
for the request the searcher wrote into its config, and some node runs more than one trial at
once (packed, where a whole GPU each would run one).
"""

import json
import threading
from collections import defaultdict

import pytest
import ray
from ray.util.state import list_actors

from qa_ray import metrics as m
from qa_ray.cli import main
from qa_ray.tracking.runs import child_runs, find_parent_run
from tests.cluster import LocalCluster
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration

CAPACITY = {"head": 2600.0, "node": 3900.0}


def _poll(url: str, stop: threading.Event, snapshots: list) -> None:
    while not stop.is_set():
        try:
            actors = list_actors(
                address=url,
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                detail=True,
                raise_on_missing_output=False,
            )
        except Exception:  # the dashboard busy or not up yet: try again
            actors = None
        if actors is not None:
            snapshots.append([(a.node_id, dict(a.required_resources or {})) for a in actors])
        stop.wait(0.3)


def _amount(resources: dict, name: str) -> float | None:
    """A placement-group worker's ``name`` resource: Ray names it ``{name}_group_{i}_{pg}``
    (and the wildcard ``{name}_group_{pg}``), both the bundle's amount."""
    if name in resources:
        return resources[name]
    found = [v for k, v in resources.items() if k.startswith(f"{name}_group_")]
    return max(found) if found else None


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_packed_trials_never_ask_a_node_for_more_memory_than_it_has(
    tiny_model_dir, tmp_path, capsys
):
    sweep, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=6)
    gpu_mem = m.GPU_MEMORY_RESOURCE
    cluster = LocalCluster(
        tmp_path, ["--num-cpus=2", "--num-gpus=1", f"--resources={json.dumps({gpu_mem: 2600})}"]
    )
    stop, snapshots = threading.Event(), []
    try:
        cluster.add_node(
            "--num-cpus=2", "--num-gpus=1", f"--resources={json.dumps({gpu_mem: 3900})}"
        )
        head, node = cluster.wait_for_nodes(2)
        capacity = {head.node_id: CAPACITY["head"], node.node_id: CAPACITY["node"]}
        if {n.node_id for n in (head, node)} != set(capacity):
            pytest.fail("two distinct nodes expected")
        poller = threading.Thread(target=_poll, args=(cluster.dashboard_url, stop, snapshots))
        poller.start()
        argv = [
            "sweep", str(sweep), "resources.gpus_per_worker=1", "resources.pack_by_memory=true",
            "resources.cpus_per_worker=0.5", "train.device=cpu", "search.max_concurrent_trials=4",
            "--address", cluster.gcs_address,
        ]  # fmt: skip
        try:
            rc = main(argv)
        finally:
            ray.shutdown()
            stop.set()
            poller.join()
        out = capsys.readouterr().out
        assert rc == 0, out + cluster.logs()
    finally:
        stop.set()
        cluster.close()

    # Every trial ran, and logged the request its workers asked for.
    children = child_runs(uri, find_parent_run(uri, "tiny-sweep"))
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    requests = sorted(float(c.data.params[m.MEMORY_REQUEST_MB]) for c in children)
    assert all(r > 0 for r in requests)

    busy = [s for s in snapshots if s]
    assert len(busy) >= 5, f"the poller saw the workers only {len(busy)} times"
    most_on_a_node = 0
    for snapshot in busy:
        asked, gpus, count = defaultdict(float), defaultdict(float), defaultdict(int)
        for node_id, res in snapshot:
            mb, gpu = _amount(res, gpu_mem), _amount(res, "GPU")
            assert mb in requests, res  # what the searcher wrote, no other
            asked[node_id] += mb
            gpus[node_id] += gpu
            count[node_id] += 1
        for node_id, total in asked.items():
            assert total <= capacity[node_id], (node_id, total, snapshot)
            assert gpus[node_id] <= 1.0 + 1e-9, (node_id, gpus[node_id], snapshot)
        most_on_a_node = max(most_on_a_node, *count.values())
    # A whole GPU each would run one trial a node; packed by memory, some ran side by side.
    assert most_on_a_node >= 2, (requests, busy[:5])
