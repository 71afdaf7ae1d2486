"""Frozen-prefix activation cache: a trial's wall time with and without ``harness/run/frozen_cache.py``.

The same trial (build the model, ``TorchEngine.fit``: train, validate each epoch, test with both modalities and with
each masked) is run three ways, alternating, and the median of ``--repeat`` is kept:

- ``plain``: as the harness runs it today.
- ``first``: with the cache attached and empty (the first trial of a sweep: every clip's prefix computed once,
  reused by the later epochs and evaluation passes; saved to disk at the end, inside the timing).
- ``later``: with the cache loaded from the file ``first`` saved (a later trial over the same frozen weights and
  data: a learning-rate sweep, or any sweep over a pretrained backbone).

for two methods: the strict linear probe (``frozen``, ``train_norms: false``), frozen to the read-out, whose whole
output is cached; and LAVISH, whose adapters start in block 0, so only its tokeniser (``frozen_prefix = "tokens"``,
set on the instance here as the method class would declare it) is cached. Final test accuracies are compared.

    .venv/bin/python bench/frozen_cache.py [--epochs 3] [--clips 960] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.config import RunSpec
from harness.registry import ENGINES
from harness.run import frozen_cache
from harness.run.trial import build_dataset, build_model, seed_everything

CASES = {
    "frozen probe": ({"name": "frozen", "train_norms": False}, None),
    "lavish tokens": ({"name": "lavish"}, "tokens"),
}


def trial(spec: RunSpec, prefix: str | None, mode: str, directory: Path) -> tuple[float, dict]:
    """Wall time and final metrics of one trial; ``mode`` is plain, first or later."""
    t = time.perf_counter()
    seed_everything(spec.seed)
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    cache = None
    if mode != "plain":
        if prefix:
            method.frozen_prefix = prefix  # the opt-in a method class declares
        cache = frozen_cache.attach(method, spec, data, directory=directory, verbose=False)
        assert cache is not None and cache.loaded == (mode == "later"), (mode, cache and cache.loaded)
    final = ENGINES.get("torch")(spec).fit(method, task, data, lambda metrics, step: None)
    if cache is not None and mode == "first":
        cache.save()
    return time.perf_counter() - t, final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--clips", type=int, default=960, help="clips in the train split (val and test: a quarter)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_frozen_cache_"))
    clips = {"clips_train": args.clips, "clips_val": args.clips // 4, "clips_test": args.clips // 4}
    for case, (method, prefix) in CASES.items():
        spec = RunSpec.from_dict({"name": "bench", "dataset": {"name": "synthetic", **clips}, "method": method,
                                  "train": {"epochs": args.epochs}})  # fmt: skip
        build_dataset(spec)  # generate the data outside the timings
        trial(spec, prefix, "plain", tmp / "warm")  # first-call costs outside the timings
        times: dict[str, list[float]] = {"plain": [], "first": [], "later": []}
        top1 = {}
        for r in range(args.repeat):
            saved = tmp / case.replace(" ", "_") / str(r)
            for mode in times:
                dt, final = trial(spec, prefix, mode, saved)
                times[mode].append(dt)
                top1[mode] = final["test/top1"]
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"  {case}: plain {med['plain']:.1f} s, first {med['first']:.1f} s, later {med['later']:.1f} s; "
              f"test/top1 {top1['plain']:.2f} / {top1['first']:.2f} / {top1['later']:.2f}", flush=True)  # fmt: skip
        name = case.replace(" ", "_")
        print(f"frozen_cache_speedup[{name}, first trial]: {med['plain'] / med['first']:.2f}x ({args.epochs} epochs; "
              "no target)")  # fmt: skip
        print(f"frozen_cache_speedup[{name}, later trial]: {med['plain'] / med['later']:.2f}x (cache on disk; "
              "no target)")  # fmt: skip


if __name__ == "__main__":
    main()
