"""The Pareto dashboard as a team sees it: a real ``mlflow server``, a tiny sweep logged to it,
the parent run's HTML plot opened in headless Chromium through the MLflow UI."""

import os
import re

import pytest
from mlflow.tracking import MlflowClient

from qa_ray.cli import main
from qa_ray.tracking.runs import child_runs, find_parent_run
from tests.dashboard import find_chromium, mlflow_server, open_pareto_plot
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration


def _require_browser() -> None:
    missing = []
    if find_chromium() is None:
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        why = "the browser check needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs both")
        pytest.skip(why)


def test_pareto_plot_renders_in_mlflow_ui(tiny_model_dir, tmp_path, ray_2cpu):
    _require_browser()
    with mlflow_server(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log"
    ) as url:
        path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=3, tracking_uri=url)
        assert main(["sweep", str(path)]) == 0

        client = MlflowClient(url)
        parent_id = find_parent_run(url, "tiny-sweep")
        exp_id = client.get_run(parent_id).info.experiment_id
        scored = [c for c in child_runs(url, parent_id) if c.info.status == "FINISHED"]
        assert len(scored) == 3
        # The filter the README gives for the runs view.
        front = client.search_runs([exp_id], "tags.pareto_optimal = 'true'")
        assert front and {r.info.run_id for r in front} <= {c.info.run_id for c in scored}

        shot = tmp_path / "pareto.png"
        seen = open_pareto_plot(url, exp_id, parent_id, shot)

    assert seen["rendered_points"] == seen["data_points"] == len(scored), seen
    assert seen["front_points"] == len(front), seen
    assert seen["front_line_points"] == 2 * len(front) - 1, seen  # a staircase through the front
    assert "Pareto front" in seen["legend"], seen
    # Every trial's method and bits are known to the plot (resolved, even where not sampled).
    methods = [name for name in seen["legend"] if name != "Pareto front"]
    assert methods and all(re.fullmatch(r"(full|lora) (4|8|16|32)-bit", m) for m in methods), seen
    assert (seen["x_title"], seen["y_title"]) == ("peak_memory_mb", "eval_f1")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
