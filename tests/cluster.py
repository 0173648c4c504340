"""Real multi-node Ray on one machine for the cluster tests: ``ray start --block`` processes.

Each node is one ``ray start ... --block`` process in its own session, so the test stops it (and
the raylet, GCS and workers it started) by its pid. Each node also has its own ``--temp-dir``:
nodes sharing one would share ``runtime_resources/``, where one node's runtime-env agent
replaces the job's unpacked ``working_dir`` under the other node's driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.dashboard import _free_port, _stop

VENV_BIN = str(Path(sys.executable).parent)


def node_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray node: this venv first on PATH, so jobs run its ``python``.

    Token authentication is on, as Ray 2.60 defaults to, with the token every process on this
    machine reads (``~/.ray/auth_token``; conftest sets the same mode for the test process).
    """
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        **extra,
    )
    env.pop("RAY_ADDRESS", None)
    return env


class LocalCluster:
    """A Ray head (and optional extra nodes) on loopback, stopped by pid on ``close()``."""

    def __init__(
        self,
        tmp: Path,
        head_args: list[str] = (),
        env: dict[str, str] | None = None,
        gcs_port: int | None = None,
    ):
        self.tmp = tmp
        self.env = env or node_env()
        self.gcs_port = gcs_port or _free_port()
        self.dashboard_port = _free_port()
        self.procs: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        self._start(
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true",
                *head_args,
            ],
            "head",
        )

    @property
    def gcs_address(self) -> str:
        from ray._private.services import get_node_ip_address

        return f"{get_node_ip_address()}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.tmp / f"ray-{name}.log", "w")  # noqa: SIM115 - closed with the process
        # Short, per node: Ray's unix socket paths under it must stay below 108 characters.
        self.temp_dirs.append(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        cmd = [
            f"{VENV_BIN}/ray",
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dirs[-1]}",
            *args,
        ]
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs.append(proc)

    def add_node(self, *args: str) -> None:
        if len(self.procs) == 1:  # a node started before the head's GCS is up exits at once
            self.wait_for_nodes(1)
        self._start([f"--address={self.gcs_address}", *args], f"node{len(self.procs)}")

    def alive_nodes(self) -> list:
        """Ray's NodeState records (node_id, resources_total, ...) of the alive nodes."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard_url, raise_on_missing_output=False)
        return [n for n in nodes if n.state == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout_s: float = 120.0) -> list:
        deadline = time.monotonic() + timeout_s
        last: list = []
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a ray node exited {p.returncode}: {self.logs()}")
            with contextlib.suppress(Exception):
                last = self.alive_nodes()
                if len(last) == n:
                    return last
            time.sleep(1)
        raise TimeoutError(f"{len(last)} alive Ray nodes, not {n}, after {timeout_s:.0f} s")

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(self.tmp.glob("ray-*.log"))
        )

    def close(self) -> None:
        for p in reversed(self.procs):  # worker nodes first, then the head
            _stop(p.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        if os.environ.get("QA_RAY_KEEP_RAY_LOGS"):  # to read the session logs after a failure
            print(f"kept Ray temp dirs: {self.temp_dirs}")
            return
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
