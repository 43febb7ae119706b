"""Throw-away local processes for the end-to-end tests: free ports, start with a log file in
their own session, wait for HTTP health, stop the whole process group (a uniquely named
module so it cannot clash with another test folder's helpers)."""

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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log (tail) ---\n{text[-chars:]}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def mamlctl_argv(*args: str) -> list[str]:
    """The installed console script's entry point, run with this interpreter."""
    return [sys.executable, "-c", "from mamlctl.cli.app import main; main()", *args]


def start(name: str, argv: Sequence[str], *, env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
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
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2.0) as response:
            if response.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url} not answering after {timeout_s:.0f} s\n{proc.log_tail()}")
