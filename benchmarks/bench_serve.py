"""Scoring-server benchmark: ``mamlctl serve`` vs ``mlflow models serve``, one run, loopback.

What it does (prints one JSON document on stdout; progress on stderr):

1. Builds a registry home with the M4 Hourly family (P=24, L=96, H=48, K=167; the real 414
   series, ingested) and one adapted model per series, written by mamlctl's exporter
   (``maml.export``: template exported once, weights stamped per series) and recorded in the
   registry database. The weights are a seeded initializer plus a per-series perturbation
   (the adaptation job is not what is measured here); loc/scale are each series' real support
   statistics. Model: the family default MLP (96 -> 64 -> 64 -> 48, mean head).
   ``--adapt-scope head`` perturbs only the last layer per series (head-only adaptation, ANIL):
   the bank keeps the body as constants and gathers only the head per row.
2. Starts ``mamlctl serve`` (one worker, uvicorn + uvloop + httptools) as a subprocess and
   measures cold start (spawn -> ``/readyz`` 200). Load comes from ``wrk`` (a separate C
   process) with a Lua script picking a random series' real window per request.
3. Starts ``mlflow models serve --env-manager local`` (one worker) serving a copy of one of
   the same ONNX files, logged with ``mlflow.onnx.log_model`` into a temporary store.
4. With both up, single-row p50/p99, requests/s and server CPU per request at concurrency 1
   and 8, interleaved (ours, mlflow, ours, ...) ``--repeats`` times, medians reported; then
   batch-of-256 rows/s (each batch mixes random series), as JSON and in the binary batch format
   (``mamlctl.serving.binary``, float32 rows). Server CPU per request (from
   ``/proc``) is the figure least distorted by other work on a shared machine.
5. A second home with 10,000 series (copies of the 414 with perturbed weights): cold start
   and RSS of the serving process once ready.

Run: ``python benchmarks/bench_serve.py [--duration 5] [--series 10000] [--adapt-scope head]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

M4 = Path("/work/shared/data/m4")
L, H, K, P = 96, 48, 167, 24
HIDDEN = (64, 64)
LUA = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("TARGET_PATH")
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
local binary = os.getenv("CONTENT_TYPE") == "application/octet-stream"
if binary then
  bodies = {}
  for line in io.lines(os.getenv("BODIES")) do
    bodies[#bodies + 1] = (line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
end
math.randomseed(7)
request = function()
  return wrk.format("POST", path, nil, bodies[math.random(#bodies)])
end
"""


def machine_info() -> dict[str, Any]:
    """What a serving figure depends on: the CPU (``lscpu``'s model name), the instruction sets
    onnxruntime's kernels choose between (MLAS picks its GEMM and int8 kernels by them), the
    onnxruntime and numpy versions, the core count and the load average now."""
    import onnxruntime

    model, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.CalledProcessError):
        pass
    isa = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "isa": [f for f in isa if f in flags],
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "load_avg_start": os.getloadavg(),
    }


def _busy_poll_setting(serve_args: Sequence[str]) -> str:
    """The busy-poll window the server ran with (``--busy-poll X`` or ``--busy-poll=X``)."""
    for i, arg in enumerate(serve_args):
        if arg.startswith("--busy-poll="):
            return arg.split("=", 1)[1]
        if arg == "--busy-poll" and i + 1 < len(serve_args):
            return serve_args[i + 1]
    return os.environ.get("MAMLCTL_SERVE_BUSY_POLL", "default (100us)")


def log(msg: str) -> None:
    print(f"[bench_serve] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_m4_hourly() -> dict[str, np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(M4 / "Hourly-train.csv.gz", index_col=0)
    return {str(sid): row.dropna().to_numpy(dtype=np.float64) for sid, row in frame.iterrows()}


# ----------------------------------------------------------------------------- setup


def build_home(
    home: Path,
    values: dict[str, np.ndarray],
    *,
    copies: int,
    seed: int,
    store_points: int | None = None,
    scope: str = "all",
    weights: str = "int8-delta",
    residual_scale_rel: float = 0.1,
) -> tuple[list[str], dict[str, list[float]]]:
    """Registry + files for ``copies`` x the series in ``values``; returns ids and windows.

    ``weights``: the export's weight format (``adapt --weights``; default int8 deltas from the
    initializer, as the product's). ``residual_scale_rel``: the models' residual scale in units
    of each series' support scale (their weights are not adapted, so a small one makes the
    anomaly flag fire on most observations).

    ``scope="head"``: only the last layer gets a per-series perturbation (what head-only
    adaptation, ANIL, produces: the body is the initializer's in every file)."""
    import torch

    from mamlctl.domain import Family, InitializerRef, Series
    from mamlctl.maml.export import SeriesBatch, template_for_config
    from mamlctl.maml.models import MLPConfig, build_model, head_names
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series
    from mamlctl.registry.model_queries import record_adapted_model, record_initializer_version
    from mamlctl.settings import Settings
    from mamlctl.stages.export import export_to_files
    from mamlctl.timeseries.scaling import support_stats

    settings = Settings(home=home)
    settings.ensure_home()
    config = MLPConfig(input_size=L, output_size=H, hidden=HIDDEN, head="mean")
    head = set(head_names(config))  # the last Linear: weight and bias
    # the product's export: per-series layers in the batched linear form (served bit-exact)
    template = template_for_config(
        config, per_series=None if scope == "all" else sorted(head), weights=weights
    )
    torch.manual_seed(seed)
    base = {n: p.detach().numpy().copy() for n, p in build_model(config).named_parameters()}
    template = template.with_base(base)
    rng = np.random.default_rng(seed)
    ids, windows, tails = [], {}, []
    for c in range(copies):
        for sid, vals in values.items():
            new = sid if copies == 1 else f"{sid}-c{c}"
            ids.append(new)
            windows[new] = [float(v) for v in vals[-L:]]
            tails.append(vals[-K:])
    n = len(ids)
    loc, scale = support_stats(np.stack(tails))
    params = {
        name: (
            arr[None] + rng.normal(0, 0.01, size=(n, *arr.shape))
            if scope == "all" or name in head
            else np.broadcast_to(arr[None], (n, *arr.shape))
        ).astype(np.float32)
        for name, arr in base.items()
    }
    batch = SeriesBatch(
        series_ids=tuple(ids),
        params=params,
        loc=loc,
        scale=scale,
        residual_scale=residual_scale_rel * scale,
        threshold=np.full(n, 0.999),
    )
    family = Family(
        name="hourly", period=P, interval_seconds=3600.0, window=L, horizon=H, support=K
    )
    with open_registry(settings) as factory, factory.begin() as sess:
        q.upsert_family(sess, family)
        keep = store_points or 10**9
        store_series(
            sess,
            [
                IncomingSeries(
                    series=Series(series_id=sid, values=values[sid.split("-c")[0]][-keep:]),
                    source="m4-hourly",
                    interval_seconds=3600.0,
                )
                for sid in ids
            ],
        )
        q.assign_family(sess, "hourly", ids)
        init = record_initializer_version(sess, family="hourly", version=1, run_id="bench-run")
    adapted_at = datetime.now(UTC)
    stored = export_to_files(
        template,
        batch,
        models_dir=settings.models_dir,
        initializer=InitializerRef(
            family="hourly", registered_model=init.registered_model, version=1, run_id="bench-run"
        ),
        support=K,
        adapted_at=adapted_at,
        fsync=False,
    )
    with open_registry(settings) as factory, factory.begin() as sess:
        for i, (sid, f) in enumerate(zip(ids, stored, strict=True)):
            record_adapted_model(
                sess,
                series_id=sid,
                registered_model=init.registered_model,
                initializer_version=1,
                path=f.relpath,
                sha256=f.sha256,
                support=K,
                window=L,
                horizon=H,
                residual_scale=float(residual_scale_rel * scale[i]),
                threshold=0.999,
                adapted_at=adapted_at,
            )
    return ids, windows


def cached_home(
    home: Path, values: dict[str, np.ndarray], **kwargs: Any
) -> tuple[list[str], dict[str, list[float]]]:
    """:func:`build_home`, reusing a complete earlier build of the same arguments."""
    marker = home / "bench-home.json"
    key = {k: v for k, v in kwargs.items() if (k, v) != ("scope", "all")}
    # homes exported in an older form are rebuilt
    key["export"] = "batched-linear W@x; int8 deltas by MatMulInteger, bias in Gemm"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved["key"] == key:
            log(f"reusing {home}")
            return saved["ids"], saved["windows"]
    shutil.rmtree(home, ignore_errors=True)
    ids, windows = build_home(home, values, **kwargs)
    marker.write_text(json.dumps({"key": key, "ids": ids, "windows": windows}))
    return ids, windows


# ----------------------------------------------------------------------------- processes


def _wait_http(url: str, *, timeout: float, proc: subprocess.Popen[Any]) -> float:
    """Seconds until ``url`` answers 200, polled every 10 ms.

    Polled with ``http.client`` (~0.06 ms of CPU a try): ``httpx.get`` builds a client and an
    SSL context per call (~30 ms of CPU), which on this 2-core machine took most of a core away
    from the server whose start is being timed."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err}")
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1)
        try:
            conn.request("GET", parts.path or "/")
            if conn.getresponse().status == 200:
                return time.perf_counter() - start
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.01)
    raise RuntimeError(f"{url} not ready after {timeout} s")


#: servers this run started; the ones still running when it fails are killed on the way out
_LIVE: list[subprocess.Popen[Any]] = []


def start_mamlctl(
    home: Path, port: int, serve_args: Sequence[str] = ()
) -> tuple[subprocess.Popen[Any], float]:
    """``mamlctl serve`` on ``home``; ``serve_args``: extra options (--serve-args, ablations)."""
    env = {**os.environ, "MAMLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MAMLCTL_API_TOKEN", None)
    exe = Path(sys.executable).with_name("mamlctl")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--reload-interval", "2s", *serve_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _LIVE.append(proc)
    _wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=proc)
    return proc, time.perf_counter() - t0


def start_mlflow(model_bytes: bytes, store: Path, port: int) -> tuple[subprocess.Popen[Any], float]:
    import mlflow
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(onnx.load_from_string(model_bytes))  # a copy: mlflow may edit it
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-serve")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(proto, name="model")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when not activated
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            info.model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _LIVE.append(proc)
    _wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
    return proc, time.perf_counter() - t0


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident MB of a process tree (summed)."""
    rss = hwm = 0.0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "VmRSS":
                rss += int(rest.split()[0]) / 1024
            elif key == "VmHWM":
                hwm += int(rest.split()[0]) / 1024
    return {"rss_mb": round(rss, 1), "peak_rss_mb": round(hwm, 1)}


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (mlflow's CLI runs the server in a child process)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree."""
    ticks = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(fields[i]) for i in (11, 12))  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    bodies: Path,
    *,
    connections: int,
    duration: float,
    work: Path,
    pid: int | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    script = work / "bodies.lua"
    script.write_text(LUA)
    path = "/" + url.split("/", 3)[3]
    env = {**os.environ, "BODIES": str(bodies), "TARGET_PATH": path, "CONTENT_TYPE": content_type}
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def lat(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * _UNITS[m.group(2)] * 1e6

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    served = re.search(r"(\d+) requests in", out)
    cpu = {}
    if pid and served:
        per_req = (cpu_seconds(pid) - cpu0) / int(served.group(1))
        # Server CPU per request: unlike wall-clock figures it barely depends on what else
        # runs on the machine; 1 / it is the req/s one fully available core would sustain.
        cpu = {
            "server_cpu_us_per_request": round(per_req * 1e6, 1),
            "capacity_req_per_core_s": round(1 / per_req) if per_req > 0 else None,
        }
    return {
        **cpu,
        "connections": connections,
        "p50_us": lat("50"),
        "p99_us": lat("99"),
        "requests_per_s": rps,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else None,
    }


def write_bodies(path: Path, docs: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(d, separators=(",", ":")) for d in docs) + "\n")
    return path


# ----------------------------------------------------------------------------- main


def batch_summary(runs: list[dict[str, Any]], *, ms_digits: int, rows: int = 256) -> dict[str, Any]:
    """Medians over wrk runs of ``rows``-row batches: rows/s, server CPU per batch, p50."""
    med = statistics.median
    return {
        "rows_per_s": round(med(b["requests_per_s"] for b in runs) * rows),
        "server_cpu_ms_per_batch": round(
            med(b["server_cpu_us_per_request"] for b in runs) / 1e3, ms_digits
        ),
        "capacity_rows_per_core_s": round(med(b["capacity_req_per_core_s"] for b in runs) * rows),
        "p50_us": med(b["p50_us"] for b in runs),
        "non_2xx": sum(b["non_2xx"] for b in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per wrk run.")
    parser.add_argument("--series", type=int, default=10_000, help="Series for the RSS run.")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--adapt-scope",
        choices=("all", "head"),
        default="all",
        help="Per-series weights: every layer (full adaptation) or the last layer only (ANIL).",
    )
    parser.add_argument(
        "--weights",
        choices=("int8-delta", "float32"),
        default="int8-delta",
        help="Export format of the per-series weights (as `mamlctl adapt --weights`).",
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="Extra `mamlctl serve` options, e.g. '--busy-poll 0 --batch-threads 2'.",
    )
    parser.add_argument(
        "--cold-runs", type=int, default=5, help="Cold starts of the many-series server."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats per run.")
    parser.add_argument(
        "--only",
        choices=("cold", "batch"),
        default=None,
        help="Run one part only: 'cold' = the many-series cold start and RSS (no wrk, no "
        "mlflow); 'batch' = the batch runs of the M4 Hourly server (no mlflow, no single rows).",
    )
    parser.add_argument(
        "--homes",
        type=Path,
        default=None,
        help="Keep the built registry homes here and reuse them on the next run (setup of the "
        "10k home takes minutes); default: a temporary folder removed at the end.",
    )
    args = parser.parse_args()
    serve_args = args.serve_args.split()
    if args.only is None and shutil.which("wrk") is None:
        sys.exit("wrk is required (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    homes = args.homes or work
    homes.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": {"kind": "mlp", "window": L, "horizon": H, "hidden": list(HIDDEN), "head": "mean"},
        "duration_s_per_run": args.duration,
        "adapt_scope": args.adapt_scope,
        "weights": args.weights,
        "serve_args": serve_args or "defaults (--busy-poll 100us --batch-threads 1)",
    }
    try:
        values = load_m4_hourly()
        scope = args.adapt_scope
        if args.only != "cold":
            log(f"building the M4 Hourly home ({len(values)} series)")
            t = time.perf_counter()
            home = homes / f"m4-{scope}-{args.weights}"
            ids, windows = cached_home(
                home, values, copies=1, seed=0, scope=scope, weights=args.weights
            )
            result["setup_s"] = round(time.perf_counter() - t, 2)
            rng = np.random.default_rng(1)
            single = write_bodies(
                work / "single.txt",
                [{"series_id": sid, "window": windows[sid]} for sid in ids],
            )
            batch = write_bodies(
                work / "batch.txt",
                [
                    {
                        "items": [
                            {"series_id": s, "window": windows[s]} for s in rng.choice(ids, 256)
                        ]
                    }
                    for _ in range(16)
                ],
            )
            from mamlctl.serving.binary import encode_request

            batch_bin = work / "batch_bin.txt"  # hex lines; the Lua script decodes them
            batch_bin.write_text(
                "\n".join(
                    encode_request(
                        [it["series_id"] for it in doc["items"]],
                        [it["window"] for it in doc["items"]],
                    ).hex()
                    for doc in map(json.loads, batch.read_text().splitlines())
                )
                + "\n"
            )
            port = _free_port()
            proc, cold = start_mamlctl(home, port, serve_args)
            url = f"http://127.0.0.1:{port}/v1/score"
            ours: dict[str, Any] = {
                "cold_start_s": round(cold, 3),
                "cold_start_cpu_s": round(cpu_seconds(proc.pid), 3),
            }
            ours["ready"] = json.loads(
                subprocess.run(
                    ["curl", "-s", f"http://127.0.0.1:{port}/readyz"],
                    capture_output=True,
                    text=True,
                ).stdout
            )
            theirs: dict[str, Any] = {}
            targets: dict[str, tuple[str, Path, int]] = {"mamlctl": (url, single, proc.pid)}
            mproc = None
            if not args.skip_mlflow and args.only != "batch":
                from mamlctl.settings import Settings

                one = next(Settings(home=home).models_dir.rglob("*.onnx")).read_bytes()
                mbodies = write_bodies(  # mlflow serves one model: same-shaped real windows
                    work / "mlflow.txt",
                    [{"inputs": {"window": [windows[sid]]}} for sid in ids[:50]],
                )
                store = work / "mlflow"
                store.mkdir()
                log("starting mlflow models serve")
                mport = _free_port()
                mproc, mcold = start_mlflow(one, store, mport)
                theirs["cold_start_s"] = round(mcold, 3)
                murl = f"http://127.0.0.1:{mport}/invocations"
                targets["mlflow"] = (murl, mbodies, mproc.pid)
            # Both servers up; runs interleave (ours, mlflow, ours, ...) so a change in the shared
            # machine's load hits both alike; medians over the repeats.
            for name, (u, bodies, _) in targets.items():
                log(f"{name}: warm-up")
                wrk(u, bodies, connections=1, duration=1, work=work)
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for rep in range(args.repeats if args.only != "batch" else 0):
                for c in (1, 8):
                    for name, (u, bodies, pid) in targets.items():
                        r = wrk(
                            u, bodies, connections=c, duration=args.duration, work=work, pid=pid
                        )
                        runs.setdefault((name, c), []).append(r)
                        log(f"rep {rep} {name} c={c}: {r}")
            for (name, c), rs in runs.items():
                summary = {
                    key: round(statistics.median(r[key] for r in rs), 1)
                    for key in ("p50_us", "p99_us", "requests_per_s", "server_cpu_us_per_request")
                }
                summary["non_2xx"] = sum(r["non_2xx"] for r in rs)
                summary["runs"] = len(rs)
                (ours if name == "mamlctl" else theirs)[f"single_c{c}"] = summary
            batch_runs = []
            for _ in range(args.repeats):
                b = wrk(url, batch, connections=2, duration=args.duration, work=work, pid=proc.pid)
                batch_runs.append(b)
                log(f"mamlctl batch: {b}")
            ours["batch256"] = batch_summary(batch_runs, ms_digits=2)
            bin_runs = []
            for _ in range(args.repeats):
                b = wrk(
                    url,
                    batch_bin,
                    connections=2,
                    duration=args.duration,
                    work=work,
                    pid=proc.pid,
                    content_type="application/octet-stream",
                )
                bin_runs.append(b)
                log(f"mamlctl binary batch: {b}")
            ours["batch256_binary"] = batch_summary(bin_runs, ms_digits=3)
            ours.update(rss_mb(proc.pid))
            # what busy polling and the batch threads' spinning cost once traffic stops
            time.sleep(0.5)
            idle_cpu = cpu_seconds(proc.pid)
            time.sleep(3.0)
            ours["idle_cpu_pct"] = round(100 * (cpu_seconds(proc.pid) - idle_cpu) / 3.0, 1)
            stop(proc)
            result["mamlctl"] = ours
            # the headline: server CPU per request, the figure least moved by other work
            result["headline"] = {
                "server_cpu_us_per_single_request_c1": ours["single_c1"][
                    "server_cpu_us_per_request"
                ]
                if "single_c1" in ours
                else None,
                "server_cpu_us_per_row_binary256": round(
                    ours["batch256_binary"]["server_cpu_ms_per_batch"] * 1e3 / 256, 2
                ),
                "busy_poll": _busy_poll_setting(serve_args),
            }
            if mproc is not None:
                theirs.update(rss_mb(mproc.pid))
                stop(mproc)
                result["mlflow"] = theirs
                result["speedup_rps"] = {
                    f"c{c}": round(
                        ours[f"single_c{c}"]["requests_per_s"]
                        / theirs[f"single_c{c}"]["requests_per_s"],
                        2,
                    )
                    for c in (1, 8)
                }
                result["speedup_cpu_per_request"] = {
                    f"c{c}": round(
                        theirs[f"single_c{c}"]["server_cpu_us_per_request"]
                        / ours[f"single_c{c}"]["server_cpu_us_per_request"],
                        2,
                    )
                    for c in (1, 8)
                }

        if args.only != "batch":  # the many-series cold start and RSS
            copies = max(1, round(args.series / len(values)))
            log(f"building the {copies * len(values)}-series home")
            big = homes / f"big-{scope}-{args.weights}"
            cached_home(
                big,
                values,
                copies=copies,
                seed=2,
                store_points=L + H,
                scope=scope,
                weights=args.weights,
            )
            colds, cold_cpu, rss = [], [], {}
            for _ in range(args.cold_runs):
                port = _free_port()
                proc, cold = start_mamlctl(big, port, serve_args)
                colds.append(cold)
                cold_cpu.append(cpu_seconds(proc.pid))  # spawn -> ready, CPU of the server only
                rss = rss_mb(proc.pid)
                ready = json.loads(
                    subprocess.run(
                        ["curl", "-s", f"http://127.0.0.1:{port}/readyz"],
                        capture_output=True,
                        text=True,
                    ).stdout
                )
                stop(proc)
            result["many_series"] = {
                "series": ready["series"],
                "bank_mb": round(ready["bank_bytes"] / 2**20, 1),
                "state_load_s": ready["load_seconds"],
                "cold_start_s_runs": [round(c, 3) for c in colds],
                "cold_start_s_median": round(statistics.median(colds), 3),
                "cold_start_cpu_s_median": round(statistics.median(cold_cpu), 3),
                **rss,
            }
        result["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        for proc in _LIVE:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
