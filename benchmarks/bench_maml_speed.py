"""MAML meta-iteration speed: the batched engine vs a per-task Python loop, in the same run.

Paper setting: 1-40-40-1 ReLU MLP, meta-batch 25, K = 10 support + 10 query, 1 inner step,
inner lr 0.01, Adam 1e-3, one thread. The reference is the textbook implementation: a Python
loop over the 25 tasks, ``functional_call`` + ``torch.autograd.grad(create_graph=True)`` per
task, ``torch.optim.Adam`` on the module (the loop learn2learn-style libraries run).

Each variant runs in its own worker process (so peak RSS is per variant); the workers take
turns, ``--rounds`` times, so a load change on the shared machine hits all variants alike.
Reported: median iterations/s over rounds, engine / loop ratio per order, peak RSS (MiB).
Also: the daily job's shape, ``batch_adapt`` of many series at once (series/s, peak RSS).

    python benchmarks/bench_maml_speed.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from typing import Any

T, K, INNER_LR = 25, 10, 0.01


def _setup() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _engine_step_fn(order: str) -> Any:
    from mamlctl.maml.meta import MetaTrainConfig, meta_train
    from mamlctl.maml.models import MLPConfig
    from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec

    method = "maml" if order == "second" else "fomaml"
    sampler = SineTaskSampler(SineTaskSpec(support=K, query=K), seed=0)

    def run(n: int) -> None:
        # meta_train itself, exactly as `mamlctl experiment sine` runs it.
        meta_train(
            MLPConfig(input_size=1, output_size=1),
            sampler,
            MetaTrainConfig(method=method, iterations=n, meta_batch_size=T, log_every=n),
        )

    return run


def _loop_step_fn(order: str) -> Any:
    import torch
    from torch.func import functional_call

    from mamlctl.maml.models import MLPConfig, build_model
    from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec

    torch.manual_seed(0)
    model = build_model(MLPConfig(input_size=1, output_size=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = SineTaskSampler(SineTaskSpec(support=K, query=K), seed=0)
    create_graph = order == "second"

    def run(n: int) -> None:
        for _ in range(n):
            b = sampler.sample(T)
            params = dict(model.named_parameters())
            total = torch.zeros(())
            for i in range(T):
                loss = (
                    (functional_call(model, params, (b.support_x[i],)) - b.support_y[i]) ** 2
                ).mean()
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
                fast = {
                    k: v - INNER_LR * g for (k, v), g in zip(params.items(), grads, strict=True)
                }
                q = ((functional_call(model, fast, (b.query_x[i],)) - b.query_y[i]) ** 2).mean()
                total = total + q
            opt.zero_grad()
            (total / T).backward()
            opt.step()

    return run


def _batch_adapt_fn(n_series: int) -> Any:
    import torch

    from mamlctl.maml.engine import batch_adapt, params_of
    from mamlctl.maml.models import ConvConfig, build_model, gaussian_nll_loss

    torch.manual_seed(0)
    config = ConvConfig(window=24, horizon=1, channels=8, layers=2, head="gaussian")
    model = build_model(config)
    params = params_of(model)
    sx = torch.randn(n_series, 32, 24)
    sy = torch.randn(n_series, 32, 1)

    def run(n: int) -> None:
        for _ in range(n):
            batch_adapt(
                model,
                params,
                sx,
                sy,
                steps=10,
                inner_lr=0.01,
                loss_fn=gaussian_nll_loss,
                chunk_size=1024,
            )

    return run


def _worker(kind: str, arg: Any, conn: Any) -> None:
    _setup()
    if kind == "engine":
        run = _engine_step_fn(arg)
    elif kind == "loop":
        run = _loop_step_fn(arg)
    else:
        run = _batch_adapt_fn(arg)
    run(3)  # warm-up
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
            return
        began = time.perf_counter()
        run(msg)
        conn.send(time.perf_counter() - began)


def _calibrate(conn: Any, seconds: float) -> int:
    conn.send(5)
    dt = conn.recv()
    return max(1, int(seconds * 5 / max(dt, 1e-6)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="target seconds per measurement")
    ap.add_argument("--series", type=int, default=4096, help="series for the batch_adapt case")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    variants = {
        "engine_second_order": ("engine", "second"),
        "loop_second_order": ("loop", "second"),
        "engine_first_order": ("engine", "first"),
        "loop_first_order": ("loop", "first"),
        "batch_adapt_conv": ("adapt", args.series),
    }
    workers: dict[str, tuple[Any, Any]] = {}
    for name, (kind, arg) in variants.items():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(kind, arg, child), daemon=True)
        proc.start()
        workers[name] = (proc, parent)
    sizes = {name: _calibrate(conn, args.seconds) for name, (_, conn) in workers.items()}
    rates: dict[str, list[float]] = {name: [] for name in workers}
    for _ in range(args.rounds):
        for name, (_, conn) in workers.items():
            conn.send(sizes[name])
            rates[name].append(sizes[name] / conn.recv())
    rss: dict[str, float] = {}
    for name, (proc, conn) in workers.items():
        conn.send(None)
        rss[name] = conn.recv()
        proc.join()

    def med(name: str) -> float:
        return statistics.median(rates[name])

    result = {
        "setting": {
            "model": "1-40-40-1 relu",
            "meta_batch": T,
            "k_support": K,
            "k_query": K,
            "inner_steps": 1,
            "threads": 1,
            "rounds": args.rounds,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "iterations_per_second_median": {
            name: round(med(name), 1) for name in rates if name != "batch_adapt_conv"
        },
        "iterations_per_second_rounds": {
            name: [round(r, 1) for r in v]
            for name, v in rates.items()
            if name != "batch_adapt_conv"
        },
        "ratio_second_order": round(med("engine_second_order") / med("loop_second_order"), 2),
        "ratio_first_order": round(med("engine_first_order") / med("loop_first_order"), 2),
        "seconds_for_70000_second_order": round(70_000 / med("engine_second_order"), 1),
        "peak_rss_mib": {name: round(v, 1) for name, v in rss.items()},
        "batch_adapt": {
            "series": args.series,
            "model": "conv L=24 C=8 gaussian",
            "k": 32,
            "steps": 10,
            "series_per_second_median": round(med("batch_adapt_conv") * args.series, 1),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
