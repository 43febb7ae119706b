"""Serving shards behind nginx (issue 17): rows/s of binary batches, one server vs two shards.

What it does (prints one JSON document on stdout; progress on stderr):

1. The M4 Hourly home of ``bench_serve.py`` (414 series, one adapted model each, int8-delta
   weights), built or reused from ``--homes``.
2. Starts, with the product's defaults (one worker, ``--batch-threads 1``): one unsharded
   ``mamlctl serve``; two ``mamlctl serve --shard I/2 --shard-ring A,B``; one nginx (one
   worker) with the config ``mamlctl shards nginx-conf`` prints for the two shards, plus a
   second ``listen`` proxying to the single server (so nginx's own cost is measured apart).
3. Batches of 256 rows in the binary format, each batch of one shard's series (a sharded
   deployment sends per-shard batches, README), ``X-Series-Id`` = its first series; the same
   16 bodies for every target. ``wrk`` (one thread, ``--connections``) for ``--duration`` s
   against: the single server directly, the single server through nginx, the two shards
   through nginx; interleaved, ``--repeats`` times, medians reported.
4. CPU seconds of every process (servers, nginx, wrk) over each run, and the machine's load:
   on a shared 2-core machine the sum says whether a second shard had a core to run on.

Run: ``python benchmarks/bench_shards.py [--duration 5] [--repeats 3] [--homes DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # a sibling script, not a package
    _free_port,
    _wait_http,
    cached_home,
    cpu_seconds,
    load_m4_hourly,
    log,
    start_mamlctl,
    stop,
)

ROWS = 256
LUA = """
local bodies, ids = {}, {}
for line in io.lines(os.getenv("BODIES")) do
  local sid, hex = line:match("^(%S+) (%x+)$")
  ids[#ids + 1] = sid
  bodies[#bodies + 1] = (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end
local n = 0
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/v1/score", {["Content-Type"] = "application/octet-stream",
    ["X-Series-Id"] = ids[n]}, bodies[n])
end
"""


def _nginx(work: Path, fragment: str, ports: list[int]) -> subprocess.Popen[Any]:
    root = work / "nginx"
    root.mkdir()
    temps = "".join(
        f"    {k}_temp_path {root / k};\n"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {root / 'pid'};\nerror_log {root / 'error.log'};\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n{temps}{fragment}}}\n"
    )
    argv = ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)]
    proc = subprocess.Popen([*argv, "-g", "daemon off;"])
    for port in ports:
        _wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
    return proc


def _wrk(
    port: int, bodies: Path, script: Path, *, connections: int, duration: float
) -> dict[str, Any]:
    env = {**os.environ, "BODIES": str(bodies)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/score"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "rows_per_s": round(rps * ROWS),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sock.group(1) if sock else None,
        "wrk_cpu_s": round(cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per wrk run.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats.")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections.")
    parser.add_argument("--homes", type=Path, default=None, help="Keep/reuse the built home.")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install {tool})")
    from mamlctl.serving.binary import encode_request
    from mamlctl.serving.shards import Ring, nginx_conf

    work = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    homes = args.homes or work
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "duration_s_per_run": args.duration,
        "connections": args.connections,
        "rows_per_batch": ROWS,
    }
    procs: list[subprocess.Popen[Any]] = []
    try:
        home = homes / "m4-all-int8-delta"
        ids, windows = cached_home(
            home, load_m4_hourly(), copies=1, seed=0, scope="all", weights="int8-delta"
        )
        single, front_single, front_shards, *shard_ports = (_free_port() for _ in range(5))
        ring = Ring.of([f"127.0.0.1:{p}" for p in shard_ports])
        spec = ",".join(ring.servers)
        rng = np.random.default_rng(1)
        shares = [[s for s in ids if ring.owner(s) == i] for i in range(2)]
        result["series_per_shard"] = [len(s) for s in shares]
        bodies = work / "bodies.txt"
        lines = []
        for k in range(16):
            chosen = [str(s) for s in rng.choice(shares[k % 2], ROWS)]
            body = encode_request(chosen, [windows[s] for s in chosen])
            lines.append(f"{chosen[0]} {body.hex()}")
        bodies.write_text("\n".join(lines) + "\n")
        script = work / "shards.lua"
        script.write_text(LUA)

        servers: dict[str, subprocess.Popen[Any]] = {}
        servers["single"], _ = start_mamlctl(home, single)
        for i, port in enumerate(shard_ports):
            servers[f"shard{i}"], _ = start_mamlctl(
                home, port, ["--shard", f"{i}/2", "--shard-ring", spec]
            )
        procs.extend(servers.values())
        fragment = nginx_conf(ring, listen=f"127.0.0.1:{front_shards}", max_body_bytes=1 << 20)
        fragment += (
            f"upstream mamlctl_single {{ server 127.0.0.1:{single}; keepalive 32; }}\n"
            f"server {{ listen 127.0.0.1:{front_single}; location / {{ proxy_pass "
            'http://mamlctl_single; proxy_http_version 1.1; proxy_set_header Connection ""; } }\n'
        )
        nginx = _nginx(work, fragment, [front_single, front_shards])
        procs.append(nginx)
        targets = {
            "single_direct": (single, ["single"]),
            "single_via_nginx": (front_single, ["single"]),
            "two_shards_via_nginx": (front_shards, ["shard0", "shard1"]),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(args.repeats):
            for name, (port, busy) in targets.items():
                pids = {k: p.pid for k, p in servers.items()} | {"nginx": nginx.pid}
                cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
                t0 = time.perf_counter()
                run = _wrk(
                    port, bodies, script, connections=args.connections, duration=args.duration
                )
                wall = time.perf_counter() - t0
                cpu = {k: round(cpu_seconds(pid) - cpu0[k], 2) for k, pid in pids.items()}
                run["cpu_s"] = {k: v for k, v in cpu.items() if k in busy or k == "nginx"}
                total = sum(run["cpu_s"].values()) + run["wrk_cpu_s"]
                run["cores_busy"] = round(total / wall, 2)
                log(f"{name}: {run}")
                runs[name].append(run)
        med = statistics.median
        summary = {
            name: {
                "rows_per_s": round(med(r["rows_per_s"] for r in rs)),
                "cores_busy": med(r["cores_busy"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs),
            }
            for name, rs in runs.items()
        }
        base = summary["single_direct"]["rows_per_s"]
        for entry in summary.values():
            entry["x_single_direct"] = round(entry["rows_per_s"] / base, 2)
        result["summary"] = summary
        result["runs"] = runs
        result["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        for proc in reversed(procs):
            stop(proc)
        if args.homes is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
