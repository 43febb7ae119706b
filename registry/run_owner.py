"""Who owns an MLflow run, and ending the RUNNING runs whose owner is gone.

Every run mamlctl starts carries the tags :data:`TAG_HOST`, :data:`TAG_PID` and
:data:`TAG_STARTED` (the run's creation time, epoch seconds). A process killed with ``kill -9``,
or one whose tracking server went away before it could end its run, leaves the run RUNNING;
the next run started in the same family (``adapt``, ``train``) calls :func:`end_stale_runs`,
which ends as KILLED every RUNNING run of that experiment that was started on this host by a
process that no longer exists: its pid is not alive, is a zombie, or belongs to a process that
started after the run did (the pid was reused). Runs of other hosts are never touched (their
processes cannot be checked from here), nor runs without these tags.

A run of *this* process counts as live only while its :class:`~mamlctl.registry.mlflow_runs.
TrackedRun` is open: the open run ids are kept in :data:`_OPEN_HERE` (process-local by nature:
it answers "is this pid's run still being worked on"), so a long-lived process (``watch``)
also ends the run a previous job of its own could not end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mamlctl.registry.mlflow_client import translate_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_HOST = "mamlctl.host"
TAG_PID = "mamlctl.pid"
TAG_STARTED = "mamlctl.started_at"
TAG_END_REASON = "mamlctl.end_reason"
#: Clock slack between a process's start (from /proc, in clock ticks) and its run's tag.
_SLACK_S = 2.0

#: Run ids of this process's open TrackedRuns (see the module doc).
_OPEN_HERE: set[str] = set()


def owner_tags(*, now: float | None = None) -> dict[str, str]:
    """The ownership tags of a run this process is about to create."""
    started = time.time() if now is None else now
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_STARTED: f"{started:.3f}",
    }


def mark_open(run_id: str) -> None:
    _OPEN_HERE.add(run_id)


def mark_closed(run_id: str) -> None:
    _OPEN_HERE.discard(run_id)


def _process_start(pid: int) -> tuple[float, str] | None:
    """(start time in epoch seconds, state letter) of ``pid`` from /proc; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        state, ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK"), state
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: int, *, run_started: float) -> bool:
    """Whether process ``pid`` of this host may still be working on a run it started at
    ``run_started`` (epoch seconds)."""
    if pid == os.getpid():
        return False  # the caller checks _OPEN_HERE first
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    info = _process_start(pid)
    if info is None:
        return True
    started, state = info
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return started <= run_started + _SLACK_S  # else the pid was reused by a newer process


def is_stale(tags: dict[str, str], run_id: str, *, host: str) -> bool:
    """A RUNNING run's owner (from its tags) is a process of ``host`` that is gone."""
    if tags.get(TAG_HOST) != host:
        return False
    try:
        pid = int(tags[TAG_PID])
        started = float(tags[TAG_STARTED])
    except (KeyError, ValueError):
        return False
    if pid == os.getpid():
        return run_id not in _OPEN_HERE
    return not owner_alive(pid, run_started=started)


def end_stale_runs(client: MlflowClient, experiment_id: str, *, tracking_uri: str) -> list[str]:
    """End as KILLED the RUNNING runs of ``experiment_id`` whose owner process on this host is
    gone (see the module doc); returns their run ids."""
    host = socket.gethostname()
    escaped = host.replace("'", "\\'")
    with translate_errors(tracking_uri):
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{escaped}'",
            max_results=1000,
        )
    ended: list[str] = []
    for run in runs:
        run_id = str(run.info.run_id)
        tags = {str(k): str(v) for k, v in run.data.tags.items()}
        if run.info.status != "RUNNING" or not is_stale(tags, run_id, host=host):
            continue
        reason = f"owner process {tags[TAG_PID]} on {host} was gone; ended by pid {os.getpid()}"
        # A REST store prints "View run ..." links on stdout; keep stdout for --json output.
        with translate_errors(tracking_uri), contextlib.redirect_stdout(sys.stderr):
            client.set_tag(run_id, TAG_END_REASON, reason)
            client.set_terminated(run_id, "KILLED")
        ended.append(run_id)
    return ended
