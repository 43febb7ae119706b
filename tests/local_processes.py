"""Throw-away local processes for the tests that need real servers (mlflow server, mamlctl
serve/watch/ui): free loopback ports, start in their own session with a log file, wait for HTTP
health, stop the whole process group. One module at the tests' root (pytest puts this folder on
``sys.path`` for ``tests/conftest.py``), uniquely named so it cannot clash with a test folder's
own helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    """SIGTERM the process group (uvicorn/gunicorn workers included), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def _answers_200(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2.0) as response:
        return bool(response.status == 200)
    return False


def wait_for_health(url: str, *, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Until ``{url}/health`` answers 200; raises if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited early with status {process.returncode}")
        if _answers_200(f"{url}/health"):
            return
        time.sleep(0.25)
    raise RuntimeError(f"server at {url} not healthy after {timeout_s:.0f} s")


@dataclass
class Proc:
    """A started process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log (tail) ---\n{text[-chars:]}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process_group(self.process)


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` in its own session, stdout and stderr into ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    return Proc(name=name, process=process, log_path=log_path)


def wait_http(url: str, *, proc: Proc, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ``url`` answers 200 (raises with the process log if it dies or times out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.process.returncode}\n{proc.log_tail()}"
            )
        if _answers_200(url):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{url} not answering after {timeout_s:.0f} s\n{proc.log_tail()}")


def mamlctl_argv(*args: str) -> list[str]:
    """The installed console script's entry point, run with this interpreter."""
    return [sys.executable, "-c", "from mamlctl.cli.app import main; main()", *args]


def mlflow_server_argv(root: Path, port: int) -> list[str]:
    """A one-worker ``mlflow server`` on loopback, SQLite store and artifacts in ``root``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_mlflow_server(
    root: Path, port: int, *, env: dict[str, str], name: str = "mlflow"
) -> Proc:
    """Start :func:`mlflow_server_argv` and wait until ``/health`` answers."""
    proc = start(name, mlflow_server_argv(root, port), env=env, log_dir=root, cwd=root)
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc


def start_nginx(
    http_fragment: str, root: Path, *, env: dict[str, str], name: str = "nginx"
) -> Proc:
    """Debian's ``nginx`` in the foreground with ``http_fragment`` (maps, upstreams, servers)
    as its ``http`` block; pid, logs and temp folders under ``root``. Waiting for it to answer
    is the caller's (it knows which path to ask)."""
    root.mkdir(parents=True, exist_ok=True)
    # as root, nginx's workers run as "nobody" unless told otherwise: keep them able to reach
    # the temp folders below a private test folder
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {root / 'nginx.pid'};\nerror_log {root / 'error.log'};\n"
        "events { worker_connections 256; }\n"
        "http {\n    access_log off;\n"
        + "".join(
            f"    {kind}_temp_path {root / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + http_fragment
        + "}\n"
    )
    argv = ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)]
    argv += ["-g", "daemon off;"]
    return start(name, argv, env=env, log_dir=root)
