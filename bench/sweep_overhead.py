"""Sweep overhead: N short trials on local Ray against the same trials run back to back in one process.

Three ways of running the same N trials (the synthetic default at a reduced size, seeds 0 .. N-1, one intra-op
thread each, as a sweep gives a trial that holds one CPU):

- ``sequential``: ``run_trial`` N times in this process (silent reporter): the baseline.
- ``sweep x1``: ``harness.sweep.run_sweep`` at ``max_concurrent_trials=1`` into a temporary MLflow store, as a user
  runs it: Ray start-up and shutdown, a worker process reused across trials (``tune.reuse_actors``, the default),
  Tune's reporting and the driver's MLflow logging included.
- ``sweep x2``: the same at ``max_concurrent_trials=2`` on the machine's cores (the target assumes 2).
- ``x1 fresh`` (``--no-fresh`` drops it): ``sweep x1`` with ``tune.reuse_actors: false``, a new worker process (torch,
  timm and the harness imported again) per trial: what reusing workers saves.

Ray start-up (``ray.init``, timed inside ``run_sweep``) is part of what a user waits for, so it is included in
both sweep figures and also printed on its own. The MLflow store is created (schema migrations) once before
the timings: a user's store exists after the first sweep. The variants alternate (ABCABC...) and the median of
``--repeat`` is kept, so the ratios are measured side by side in one process.

    .venv/bin/python bench/sweep_overhead.py [--trials 4] [--epochs 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml


class Silent:
    def start(self, info: dict) -> None:
        pass

    def report(self, metrics: dict, step: int) -> None:
        pass


def sweep_dict(trials: int, epochs: int, clips: int, cache: Path, concurrent: int, reuse: bool = True) -> dict:
    """A sweep over ``trials`` seeds of one tiny method on a reduced synthetic default."""
    return {
        "name": f"bench_sweep_x{concurrent}",
        "dataset": {"name": "synthetic", "clips_train": clips, "clips_val": clips // 4, "clips_test": clips // 4},
        "backbone": {"name": "tiny"},
        "method": {"name": "vanilla", "fusion_layer": 0, "readout": "gap"},
        "train": {"epochs": epochs, "threads": 1},
        "cache_dir": str(cache),
        "search": {"seed": {"grid": list(range(trials))}},
        "tune": {"max_concurrent_trials": concurrent, "resources": {"cpu": 1}, "reuse_actors": reuse},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="N, trials per sweep")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--clips", type=int, default=960, help="clips in the train split (val and test: a quarter)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="also time sweep x1 with a new worker process per trial (reuse_actors: false)")  # fmt: skip
    args = ap.parse_args()

    import ray
    import torch

    from harness.config import load_config
    from harness.run.trial import build_dataset, run_trial
    from harness.sweep.driver import run_sweep
    from harness.tracking import tracking_uri

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    specs = {}
    for key, concurrent, reuse in ((1, 1, True), (2, 2, True), ("fresh", 1, False)):
        path = tmp / f"sweep_{key}.yaml"
        path.write_text(yaml.safe_dump(sweep_dict(args.trials, args.epochs, args.clips, tmp / "cache", concurrent,
                                                  reuse)))  # fmt: skip
        specs[key] = load_config(path)
    runs = [specs[1].resolve({"seed": s}) for s in range(args.trials)]
    uri, log = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "sweeps.log"

    ray_init = ray.init
    init_s: list[float] = []

    def timed_init(*a, **kw):
        t = time.perf_counter()
        try:
            return ray_init(*a, **kw)
        finally:
            init_s.append(time.perf_counter() - t)

    ray.init = timed_init  # run_sweep calls ray.init through the module: its start-up is timed where it happens

    def sequential() -> None:
        threads = torch.get_num_threads()
        try:
            for run in runs:
                run_trial(run, Silent())
        finally:
            torch.set_num_threads(threads)

    def sweep(key):
        def go() -> None:
            with open(log, "a") as out, contextlib.redirect_stdout(out):  # the driver's per-trial lines
                failed = run_sweep(specs[key], tracking=uri, storage=str(tmp / "ray"))
            if failed:
                raise RuntimeError(f"{failed} trial(s) of the benchmark sweep failed; see {log}")

        return go

    build_dataset(runs[0])  # generate the data outside the timings
    tracking_uri(uri)
    import mlflow

    mlflow.MlflowClient(uri).search_experiments()  # create the store (schema migrations) outside the timings
    run_trial(runs[0], Silent())  # first-call costs of this process (kernels, allocator) outside the timings
    variants = {"sequential": sequential, "sweep x1": sweep(1), "sweep x2": sweep(2)}
    if args.fresh:
        variants["x1 fresh"] = sweep("fresh")
    times: dict[str, list[float]] = {k: [] for k in variants}
    inits: dict[str, list[float]] = {k: [] for k in variants if k != "sequential"}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            before = len(init_s)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if name in inits:
                inits[name].append(sum(init_s[before:]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ray_start = statistics.median([t for k, ts in inits.items() for t in ts])
    for name, ts in times.items():
        print(f"  {name:10s} {med[name]:6.1f} s median of {', '.join(f'{t:.1f}' for t in ts)}")
    print(f"  ({args.trials} trials of {args.epochs} epochs on {args.clips} clips; {os.cpu_count()} cores; "
          f"sequential {med['sequential'] / args.trials:.1f} s per trial)")  # fmt: skip
    x1, x2 = med["sweep x1"] / med["sequential"], med["sweep x2"] / med["sequential"]
    print(f"sweep overhead (1 concurrent): {x1:.2f}x (target <= 1.25; Ray start-up included)")
    print(f"sweep makespan (2 concurrent)/sequential: {x2:.2f}x (target <= 0.65; Ray start-up included)")
    print(f"ray_startup_s: {ray_start:.1f} s (ray.init inside run_sweep; no target)")
    overhead = (med["sweep x1"] - med["sequential"] - ray_start) / args.trials
    print(f"sweep_overhead_per_trial_s: {overhead:.1f} s (beyond Ray start-up; no target)")
    if "x1 fresh" in med:
        print(f"sweep_overhead_fresh_workers (1 concurrent): {med['x1 fresh'] / med['sequential']:.2f}x (tune."
              "reuse_actors: false, a new worker process per trial; no target)")  # fmt: skip


if __name__ == "__main__":
    main()
