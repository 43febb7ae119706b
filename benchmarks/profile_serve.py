"""Where the scoring server's CPU goes: py-spy profiles of single rows (c=1) and binary batches.

Builds (or reuses, ``--homes``) the M4 Hourly home of ``bench_serve.py``, starts ``mamlctl
serve`` with the given options, drives it with ``wrk`` and records the server with ``py-spy
record --native --format raw`` (collapsed stacks, native frames included) for the whole run.
Each sample is put in the first category, from the leaf upwards, whose pattern its stack
holds; the JSON printed gives each workload's server CPU per request (from ``/proc``) and the
share of samples per category, so that CPU per request x share = microseconds per request per
category. Categories (``CATEGORIES``):

- ``ort_run``: onnxruntime executing the bank graph (``InferenceSession.run``'s native work);
- ``gather``: numpy building the bank's inputs (takes, stacking windows);
- ``parse``: request parsing (httptools, orjson, the binary decoder);
- ``respond``: serialising and writing the answer (orjson dumps, transport writes);
- ``busy_poll``: the loop spinning after an answer (``BusyPoll._spin``);
- ``loop``: uvloop's own work (epoll, callbacks), ``python``: everything else.

Run: ``python benchmarks/profile_serve.py --homes /tmp/bench-homes [--serve-args '--busy-poll 0']``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serve as bs

#: (category, substrings of a frame) in priority order, matched from the leaf upwards
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("busy_poll", ("_spin (",)),
    ("ort_run", ("onnxruntime::", "OrtRun", "InferenceSession::Run", "run (onnxruntime")),
    ("gather", ("numpy", "take (", "_gather", "stack (", "concatenate")),
    ("parse", ("httptools", "parse_", "decode_request", "orjson_loads", "loads (")),
    ("respond", ("dumps (", "write (", "uv_try_write", "__libc_write", "sendmsg")),
    ("loop", ("uv__io_poll", "epoll_wait", "uv_run", "run_forever")),
]


#: The floor: a bare uvloop protocol answering every request with a fixed answer of the
#: server's size (no parsing beyond finding the end of the body, no model). What it costs per
#: request is what the loop, the syscalls and loopback TCP cost on this box.
FLOOR = r"""
import asyncio, sys, uvloop
ANSWER = sys.argv[2].encode()
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
RESP = HEAD % len(ANSWER) + ANSWER
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            self.buf = self.buf[end + 4 + n :]
            self.t.write(RESP)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
uvloop.run(main())
"""


def categorise(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # leaf first
        for name, pats in CATEGORIES:
            if any(p in frame for p in pats):
                return name
    return "python"


def profile(
    pid: int, out: Path, seconds: float, run: Any, *, rate: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record ``pid`` with py-spy while ``run()`` drives load; (run's result, profile)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    rec = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--native",
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(round(seconds) + 1),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    result = run()
    err = rec.communicate(timeout=seconds + 60)[1]
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
    counts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        k = int(n)
        total += k
        counts[categorise(stack)] += k
        leaves[stack.split(";")[-1][:120]] += k
    share = {c: round(n / total, 3) for c, n in counts.most_common()} if total else {}
    top = [{"frame": f, "share": round(n / total, 3)} for f, n in leaves.most_common(12)]
    return result, {"samples": total, "share": share, "top_leaves": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--homes", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--serve-args", default="")
    parser.add_argument(
        "--raw-dir", type=Path, default=None, help="Keep py-spy's collapsed stacks here."
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile_serve_"))
    homes = args.homes or work
    homes.mkdir(parents=True, exist_ok=True)
    if args.raw_dir:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": bs.machine_info(),
        "serve_args": args.serve_args or "defaults",
    }
    try:
        values = bs.load_m4_hourly()
        home = homes / "m4-all-int8-delta"
        ids, windows = bs.cached_home(home, values, copies=1, seed=0, weights="int8-delta")
        import numpy as np

        from mamlctl.serving.binary import encode_request

        single = bs.write_bodies(
            work / "single.txt", [{"series_id": s, "window": windows[s]} for s in ids]
        )
        rng = np.random.default_rng(1)
        batch_bin = work / "batch_bin.txt"
        batch_bin.write_text(
            "\n".join(
                encode_request(list(chosen), [windows[s] for s in chosen]).hex()
                for chosen in (rng.choice(ids, 256) for _ in range(16))
            )
            + "\n"
        )
        port = bs._free_port()
        proc, _ = bs.start_mamlctl(home, port, args.serve_args.split())
        url = f"http://127.0.0.1:{port}/v1/score"
        bs.wrk(url, single, connections=1, duration=1, work=work)
        for name, bodies, conns, ctype in (
            ("single_c1", single, 1, "application/json"),
            ("binary_batch256_c2", batch_bin, 2, "application/octet-stream"),
        ):
            # first unprofiled (py-spy stops the process for each native sample), then profiled
            clean = bs.wrk(
                url,
                bodies,
                connections=conns,
                duration=args.duration,
                work=work,
                pid=proc.pid,
                content_type=ctype,
            )
            run, prof = profile(
                proc.pid,
                (args.raw_dir or work) / f"{name}.txt",
                args.duration,
                lambda b=bodies, c=conns, t=ctype: bs.wrk(
                    url,
                    b,
                    connections=c,
                    duration=args.duration,
                    work=work,
                    pid=proc.pid,
                    content_type=t,
                ),
                rate=args.rate,
            )
            result[name] = {"wrk": clean, "wrk_profiled": run, "profile": prof}
            bs.log(f"{name}: {run} {prof['share']}")
        bs.stop(proc)
        fport = bs._free_port()
        answer = json.dumps({"forecast": [0.123456] * 48, "series_id": ids[0], "version": 1})
        floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(fport), answer])
        bs._LIVE.append(floor)
        time.sleep(1.0)
        furl = f"http://127.0.0.1:{fport}/v1/score"
        bs.wrk(furl, single, connections=1, duration=1, work=work)
        result["floor_single_c1"] = bs.wrk(
            furl, single, connections=1, duration=args.duration, work=work, pid=floor.pid
        )
        bs.log(f"floor: {result['floor_single_c1']}")
        bs.stop(floor)
        result["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        for p in bs._LIVE:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
