"""Per-segment localisation on the synthetic AVE layout: every method's seg_acc against the clip-broadcast floor.

The layout (``harness synth --layout ave``) has one 4-6 s event per 10-s clip, background elsewhere, so the label
changes within every clip. A clip-level prediction (one class broadcast to the 10 seconds) scores at most
``floor`` = the mean over test clips of (most frequent class's seconds) / 10, whatever the method; per-segment
scoring (``task.scoring: segment``, the default: each (frame, 1-s window) pair run through the method,
``harness.api.segments``) can score every second. Every registered method is trained with 3 seeds on the same clips
(LAVISH's AVE front end: 10 frames, 10 one-second windows, normalised then zero-padded) and its test seg_acc is printed
as mean ± 95% t-interval; ``beats`` says whether mean - interval > floor. A few methods are also run with
``scoring: clip`` to show the broadcast in practice. Tiny sizes: 32² frames, 32 mel bins, width 32, 2 layers. The
frozen-backbone methods adapt a random frozen ViT (no pretrained weights exist for these clips) at 10x the learning
rate and for ``--frozen-epochs``: at 20 epochs ``prompt`` had not converged on one seed of three (51.5 %).

    PYTHONPATH=. .venv/bin/python bench/ave_segments.py [--clips 100] [--epochs 20] [--frozen-epochs 60] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from harness.config import RunSpec
from harness.data.synth_media import synth
from harness.registry import FORMATS, METHODS
from harness.report.stats import t_interval
from harness.run.trial import run_trial

FROZEN = {"lavish", "avish", "adapter", "lora", "prompt", "frozen"}  # frozen backbone: 10x lr (sweeps/methods.yaml)


class Quiet:
    """A reporter that keeps nothing (the final metrics come back from run_trial)."""

    def start(self, info: dict) -> None:
        pass

    def report(self, metrics: dict, step: int) -> None:
        pass


def run_file(root: Path, cache: Path, method: str, seed: int, epochs: int, scoring: str = "segment") -> dict:
    return {
        "name": f"ave-{method}-{seed}",
        "seed": seed,
        "dataset": {
            "name": "ave",
            "root": str(root),
            "cache": str(cache / "prepared"),
            "image_size": 32,
            "resize": 32,
            "n_mels": 32,
        },  # fmt: skip
        "task": {"name": "localization", "scoring": scoring},
        "backbone": {"name": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2},
        "method": {"name": method},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "eval_batch_size": 16,
            "lr": 1e-2 if method in FROZEN else 1e-3,
            "warmup_epochs": 1.0,
            "threads": 1,
        },  # fmt: skip
        "cache_dir": str(cache),
    }


def floor(root: Path, cache: Path) -> tuple[float, int]:
    """The best seg_acc any one-class-per-clip prediction reaches on the test split, and the number of test clips."""
    spec = RunSpec.from_dict(run_file(root, cache, "late", 0, 1))
    data = FORMATS.get("ave")(spec.dataset.params, cache)
    labels = [r.label for r in data.splits["test"].records]
    best = [max(Counter(y).values()) / len(y) for y in labels]
    return 100 * sum(best) / len(best), len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--frozen-epochs", type=int, default=60, help="epochs of the frozen-backbone methods")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--clip-scoring", nargs="*", default=["vanilla", "lavish"], help="also run these with scoring clip")
    args = ap.parse_args()
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "ave", Path(tmp) / "cache"
        synth(root, "ave", clips=args.clips, seed=0)
        bound, n_test = floor(root, cache)
        rows = []
        for method in args.methods or METHODS.names():
            for scoring in ("segment", "clip") if method in args.clip_scoring else ("segment",):
                for seed in range(args.seeds):
                    t0 = time.perf_counter()
                    epochs = args.frozen_epochs if method in FROZEN else args.epochs
                    final = run_trial(RunSpec.from_dict(run_file(root, cache, method, seed, epochs, scoring)), Quiet())
                    rows.append({"method": method, "scoring": scoring, "seed": seed, "seg_acc": final["test/seg_acc"],
                                 "seconds": time.perf_counter() - t0})  # fmt: skip
                    print(f"  {method} {scoring} seed {seed}: seg_acc {final['test/seg_acc']:.1f} "
                          f"({rows[-1]['seconds']:.0f} s)", flush=True)  # fmt: skip
    runs = pd.DataFrame(rows)
    print(f"  clips {args.clips} ({n_test} test x 10 s), epochs {args.epochs} ({args.frozen_epochs} frozen-backbone), "
          f"seeds {args.seeds}; "
          f"total {time.perf_counter() - tick:.0f} s")  # fmt: skip
    print(f"  floor (best one class per clip on the test clips): {bound:.1f}")
    for (method, scoring), g in runs.groupby(["method", "scoring"], sort=False):
        mean, ci = g["seg_acc"].mean(), t_interval(g["seg_acc"])
        beats = "beats the floor" if mean - ci > bound else "does not beat the floor"
        print(f"{method} {scoring}: seg_acc {mean:.1f} ± {ci:.1f} ({beats}, floor {bound:.1f})")


if __name__ == "__main__":
    main()
