"""Harness overhead: ``run_trial`` on the synthetic default against a bare PyTorch loop doing the same work.

Both train the same method (built by the same registry call, same seed) on the same cached tensors for the same
steps with the same optimiser, and run the same evaluation passes (val each epoch, test with both modalities and
with each masked). The harness side also pays for what the bare loop skips: config validation, data loading
through the dataset class, parameter and FLOP accounting, reporting. Runs alternate and the best of ``--repeat``
is kept, so the ratio is measured side by side in one process.

    .venv/bin/python bench/overhead.py [--method vanilla] [--epochs 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.config import RunSpec
from harness.run.trial import build_dataset, build_model, run_trial, seed_everything


class Silent:
    def start(self, info: dict) -> None:
        pass

    def report(self, metrics: dict, step: int) -> None:
        pass


def bare_loop(spec: RunSpec) -> None:
    """The same training and evaluation as the torch engine, written as plainly as possible."""
    seed_everything(spec.seed)
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    params = [p for m in (method, task) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    train, bs = data.splits["train"], spec.train.batch_size

    def evaluate(split, mask: str | None = None) -> None:
        method.eval()
        with torch.no_grad():
            for batch in split.batches(spec.train.eval_batch_size):
                if mask:
                    batch[f"{mask}_present"] = torch.zeros_like(batch[f"{mask}_present"])
                task.logits(method(batch), batch)

    for epoch in range(spec.train.epochs):
        method.train()
        for batch in train.batches(bs, shuffle=True, seed=epoch, drop_last=True):
            loss = task.loss(method(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        evaluate(data.splits["val"])
    for mask in (None, "video", "audio"):
        evaluate(data.splits["test"], mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="vanilla")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    method = {"name": args.method}
    if args.method in ("vanilla", "mbt"):
        method.update(fusion_layer=0, readout="gap")
    spec = RunSpec.from_dict({"name": "bench", "dataset": {"name": "synthetic"}, "method": method,
                              "train": {"epochs": args.epochs}})  # fmt: skip
    build_dataset(spec)  # generate or load the cache outside the timings
    warm = RunSpec.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "epochs": 1}})
    bare_loop(warm), run_trial(warm, Silent())  # first-call costs (imports, allocator, kernels) outside the timings
    best = {"harness": float("inf"), "bare": float("inf")}
    for _ in range(args.repeat):
        for name, fn in (("bare", lambda: bare_loop(spec)), ("harness", lambda: run_trial(spec, Silent()))):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    ratio = best["harness"] / best["bare"]
    print(f"harness_overhead[{args.method}]: {ratio:.3f}x (target <= 1.10; harness {best['harness']:.1f} s, "
          f"bare loop {best['bare']:.1f} s, {args.epochs} epochs)")  # fmt: skip


if __name__ == "__main__":
    main()
