"""Drive the MLflow UI in headless Chromium: start ``mlflow server``, open a sweep's Pareto plot.

Used by ``tests/integration/test_dashboard.py`` and, as a script, to refresh the README's
screenshot from a real sweep's store::

    python tests/dashboard.py --backend-store-uri sqlite:///mlflow.db --sweep quickstart \\
        --out docs/mlflow_pareto.png

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` Python package (a dev dependency), which drives the system Chromium instead of
downloading its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# What the plot shows, read from the rendered page (plotly's DOM and its figure object).
_READ_PLOT = """() => {
  const gd = document.getElementById('qa-ray-pareto');
  const markers = gd.data.filter(t => t.mode === 'markers');
  const front = gd.data.find(t => t.name === 'Pareto front');
  return {
    rendered_points: gd.querySelectorAll('.scatterlayer path.point').length,
    data_points: markers.reduce((n, t) => n + t.x.length, 0),
    front_points: markers.reduce((n, t) => n + t.marker.size.filter(s => s > 9).length, 0),
    front_line_points: front ? front.x.length : 0,
    legend: [...gd.querySelectorAll('.legendtext')].map(e => e.textContent),
    x_title: gd.layout.xaxis.title.text,
    y_title: gd.layout.yaxis.title.text,
  };
}"""


def find_chromium() -> str | None:
    """``$QA_RAY_CHROMIUM``, else the first Chromium on PATH."""
    if os.environ.get("QA_RAY_CHROMIUM"):
        return os.environ["QA_RAY_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"mlflow server not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
    )


def _stop(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL what remains."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str, artifacts_dir: str | Path, log: Path, timeout_s: float = 120.0
) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, serving artifacts; yields its URL.

    Started in its own session so it is stopped, with its workers, by its pid.
    """
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--workers", "1",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log, timeout_s)
        yield url
    finally:
        _stop(proc.pid)
        proc.wait(timeout=5)


def _model_training_view(page, timeout_ms: float = 30_000) -> bool:
    """The UI as a training team sees it: the "Model training" workspace (MLflow 3.17 opens in
    "GenAI"), without the assistant panel it opens on a first visit. True if it switched."""
    switched = False
    toggle = page.get_by_text("Model training", exact=True)
    with contextlib.suppress(Exception):
        toggle.wait_for(timeout=timeout_ms)
        toggle.click()
        switched = True
    close = page.locator("[aria-label=Close]")
    with contextlib.suppress(Exception):
        close.first.wait_for(timeout=3_000)
        close.first.click()
    return switched


def open_pareto_plot(
    url: str,
    experiment_id: str,
    run_id: str,
    screenshot: Path,
    artifact: str = "pareto/pareto.html",
    timeout_s: float = 90.0,
) -> dict:
    """Opens the run's HTML artifact in the MLflow UI, screenshots it, reads the rendered plot.

    The UI shows an HTML artifact in an iframe of its own, so the plot is found by the frame
    that holds the plot's div.
    """
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            target = f"{url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}"
            page.goto(target)
            if _model_training_view(page):  # the switch lands on the runs list: back to the plot
                page.goto(target)
            deadline = time.monotonic() + timeout_s
            frame = None
            while frame is None:
                for f in page.frames:
                    with contextlib.suppress(Exception):
                        if f.evaluate("() => !!document.querySelector('#qa-ray-pareto .main-svg')"):
                            frame = f
                            break
                if frame is None:
                    if time.monotonic() > deadline:
                        page.screenshot(path=str(screenshot))
                        raise TimeoutError(
                            f"no rendered Pareto plot in the MLflow UI after {timeout_s:.0f} s "
                            f"(page screenshot: {screenshot})"
                        )
                    page.wait_for_timeout(500)
            frame.wait_for_selector("#qa-ray-pareto .scatterlayer path.point")
            page.wait_for_timeout(500)  # let plotly finish its transitions before the shot
            seen = frame.evaluate(_READ_PLOT)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            return seen
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--artifacts-dir", default="mlartifacts")
    ap.add_argument("--sweep", required=True, help="sweep name or parent run id")
    ap.add_argument("--out", type=Path, required=True, help="screenshot PNG")
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from qa_ray.tracking.runs import find_parent_run

    log = Path(tempfile.mkdtemp(prefix="qa-ray-dashboard-")) / "mlflow-server.log"
    artifacts = Path(args.artifacts_dir).resolve()
    with mlflow_server(args.backend_store_uri, artifacts, log) as url:
        run_id = find_parent_run(url, args.sweep)
        exp_id = MlflowClient(url).get_run(run_id).info.experiment_id
        seen = open_pareto_plot(url, exp_id, run_id, args.out)
    print(f"{args.out}: {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
