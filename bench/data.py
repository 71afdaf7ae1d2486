"""Data pipeline: decode throughput of ``harness prepare`` and the cached loader's speed against training.

Writes a synthetic AVE layout (``harness synth``: real H.264 + AAC MP4 files of 10 s), prepares it at the given
sizes and measures, in one process and side by side:
- decode: clips/s of the prepare pass (decode frames and audio, fbank, write shards), one process;
- loader: samples/s of the prepared train split's ``batches`` (memory-mapped shards, one batch read ahead);
- train: samples/s of forward + backward + step of the default model (the synthetic sweep's MBT on the ``tiny``
  backbone) on those same batches held in memory.
The ratio loader / train says whether the cache keeps the model busy (target >= 1: the loader is not the
bottleneck). At these small sizes on a CPU the model step is cheap, so this is the demanding case.

    .venv/bin/python bench/data.py [--clips 24] [--frames 4] [--image-size 32] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch

from harness.config import RunSpec
from harness.data.synth_media import synth
from harness.run.prepare import resolve_params
from harness.run.trial import build_dataset, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "ave", Path(tmp) / "cache"
        synth(root, "ave", args.clips)
        sets = [f"frames={args.frames}", f"image_size={args.image_size}", f"resize={args.image_size}", "n_mels=32",
                "target_frames=64"]  # fmt: skip
        cls, params = resolve_params("ave", str(root), str(cache), sets)
        tick = time.perf_counter()
        manifest = cls.prepare(params, Path(tmp), out=io.StringIO())
        decode_s = time.perf_counter() - tick
        spec = RunSpec.from_dict({"name": "bench", "dataset": {"name": "ave", **params.model_dump(mode="json")},
                                  "method": {"name": "mbt", "fusion_layer": 1}, "cache_dir": tmp,
                                  "train": {"batch_size": args.batch_size}})  # fmt: skip
        data = build_dataset(spec)
        method, task = build_model(spec, data.spec)
        train = data.splits["train"]
        opt = torch.optim.AdamW([p for m in (method, task) for p in m.parameters()], lr=1e-4)
        held = [train.on_device(b) for b in train.batches(args.batch_size, drop_last=True)]
        n = sum(len(b["id"]) for b in held)

        def load() -> None:
            for _ in train.batches(args.batch_size, drop_last=True):
                pass

        def step() -> None:
            for b in held:
                loss = task.loss(method(b), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        load(), step()  # first-call costs outside the timings
        best = {"load": float("inf"), "train": float("inf")}
        for _ in range(args.repeat):
            for name, fn in (("load", load), ("train", step)):
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
    decoded = manifest["counts"]["decoded"]
    print(f"decode_clips_per_s: {decoded / decode_s:.1f} clips/s ({manifest['decoder']}, 10-s clips, "
          f"{args.frames} frames at {args.image_size} px, one process)")  # fmt: skip
    ratio = best["train"] / best["load"]
    print(f"loader_vs_train: {ratio:.1f}x (target >= 1; loader {n / best['load']:.0f} samples/s, "
          f"train step {n / best['train']:.0f} samples/s, mbt on tiny, batch {args.batch_size})")  # fmt: skip


if __name__ == "__main__":
    main()
