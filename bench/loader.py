"""Does the real-data loader keep a ViT-B/16 MBT training step busy? Loader samples/s against the step's, one run.

Writes ``--clips`` 10-s 360x640 clips in the VGGSound layout (``bench/media.py``), prepares them at the VGGSound
card's settings and measures, in one process and one run:

- loader: samples/s of the train split's DataLoader (``loader_workers`` 1 and 2, persistent, after a warm-up epoch)
  at the card's ViT-B/16 input (32 frames of 224², an 8-s 128-mel spectrogram, MBT's augmentations), from the cache
  and (``--media``) straight from the MP4s (``dataset.cache: none``);
- CPU step: forward + backward + AdamW of MBT-B (``harness profile --preset mbt_b16_audioset``: two ViT-B/16
  streams, 4 bottlenecks from layer 8) on this CPU at batch 1 with ``--step-frames`` frames (2 and 4: the 32-frame
  step takes minutes here; ``--step-frames 32`` times it anyway), and timm's ViT-B/16 at 224² (batch 2) as a
  cross-check of the FLOP rate. The 32-frame step is projected from the FLOP rate of the largest measured step:
  every step's FLOPs (forward + backward) are counted on the meta device by ``FlopCounterMode``;
- GPU step: projected from measured ViT-B/16 training throughputs at the same FLOPs per second:
  timm's own benchmark, 390.86 samples/s on an RTX 3090 with AMP (``huggingface/pytorch-image-models``,
  ``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv``), and PaddlePaddle PLSC's ImageNet pretraining,
  3583 img/s on 8 A100s in FP16 (``PaddlePaddle/PLSC``, ``task/classification/vit/README.md``): 448 per A100.
  Attention over MBT's 3,536 tokens is a larger share of its FLOPs than over ViT-B/16's 197, at similar matmul
  efficiency on a GPU; the projection assumes the same FLOP rate.

    .venv/bin/python bench/loader.py [--clips 8] [--epochs 3] [--step-frames 2,4] [--media]

The CPU seconds per sample (this process and its live workers, from ``/proc``) are the figure to read on a shared
machine: a GPU step of G samples/s needs G x that many free cores of workers. ``datasets/README.md`` holds the
latest figures.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from media import resolve_vggsound, vggsound_root  # noqa: E402

GPUS = {  # measured ViT-B/16 (224², 197 tokens) training samples/s, and where they come from
    "RTX 3090 (timm benchmark, AMP)": 390.86,
    "A100 (PaddlePaddle PLSC, FP16; 3583 img/s on 8)": 3583 / 8,
}
PRESET = "mbt_b16_audioset"


def mbt(frames: int, device: str):
    from harness.registry import METHODS, TASKS
    from harness.run.profile import load_profile, preset_path

    spec = load_profile(preset_path(PRESET), [f"input.frames={frames}", "input.num_classes=309"])
    with torch.device(device):
        method = METHODS.get("mbt").build(spec.method, spec.backbone, spec.input)
        task = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, method.embed_dim)
    return spec.input, method, task


def train_flops(loss_fn) -> float:
    """FLOPs of one forward + backward (``loss_fn()`` returns the loss)."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.models.complexity import register_sdpa_formulas

    register_sdpa_formulas()
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def mbt_flops(frames: int) -> float:
    from harness.models.complexity import example_batch

    spec, method, task = mbt(frames, "meta")
    batch = example_batch(spec, 1, device="meta")
    return train_flops(lambda: task.loss(method(batch), batch))


def vit_flops() -> float:
    import timm

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224")
    return train_flops(lambda: vit(torch.zeros(1, 3, 224, 224, device="meta")).sum())


def timed_steps(step, steps: int) -> float:
    """Median seconds of ``steps`` calls after one warm-up call."""
    step()
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def cpu_mbt_step(frames: int, steps: int) -> float:
    """Seconds of one MBT-B training step at batch 1 with ``frames`` frames on this CPU."""
    from harness.models.complexity import example_batch

    spec, method, task = mbt(frames, "cpu")
    batch = example_batch(spec, 1)
    batch["video"], batch["audio"] = torch.randn_like(batch["video"]), torch.randn_like(batch["audio"])
    opt = torch.optim.AdamW([p for m in (method, task) for p in m.parameters()], lr=1e-4)

    def step() -> None:
        loss = task.loss(method(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_steps(step, steps)


def cpu_vit_step(steps: int, batch: int = 2) -> float:
    """Seconds per sample of timm's ViT-B/16 training step at 224² on this CPU."""
    import timm

    vit = timm.create_model("vit_base_patch16_224")
    x, y = torch.randn(batch, 3, 224, 224), torch.zeros(batch, dtype=torch.long)
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-4)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(vit(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_steps(step, steps) / batch


def cpu_seconds() -> float:
    """CPU seconds (user + sys) of this process and its live children (the loader's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    total = time.process_time()
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def loader_rate(cls, params, cache: Path, workers: int, epochs: int, batch: int) -> tuple[float, float]:
    """(train samples/s of the split's DataLoader with ``workers`` workers, CPU seconds per sample), over ``epochs``
    after a warm-up epoch."""
    train = cls(params.model_copy(update={"loader_workers": workers}), cache).splits["train"]
    for _ in train.batches(batch, shuffle=True, seed=0):  # workers start, shards open
        pass
    tick, cpu, seen = time.perf_counter(), cpu_seconds(), 0
    for epoch in range(1, epochs + 1):
        for b in train.batches(batch, shuffle=True, seed=epoch):
            seen += len(b["id"])
    rate, per = seen / (time.perf_counter() - tick), (cpu_seconds() - cpu) / seen
    train.close()
    return rate, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="timed loader epochs")
    ap.add_argument("--batch", type=int, default=2, help="loader batch size")
    ap.add_argument("--step-frames", default="2,4", help="frames of the timed CPU steps (32: the card's, minutes)")
    ap.add_argument("--steps", type=int, default=2, help="timed CPU steps per size (after one warm-up)")
    ap.add_argument("--media", action="store_true", help="also the loader without a cache (dataset.cache: none)")
    args = ap.parse_args()

    threads = torch.get_num_threads()
    print(f"{os.cpu_count()} cores, torch threads {threads}, load {os.getloadavg()[0]:.1f}")
    full = mbt_flops(32)
    vit = vit_flops()
    print(f"training step FLOPs per clip (forward + backward, counted on meta): MBT-B at 32 frames "
          f"{full / 1e12:.2f} TFLOPs; timm ViT-B/16 at 224² {vit / 1e9:.1f} GFLOPs")  # fmt: skip
    rates = []
    for frames in [int(f) for f in args.step_frames.split(",")]:
        seconds, flops = cpu_mbt_step(frames, args.steps), mbt_flops(frames)
        rates.append((frames, flops / seconds))
        print(f"CPU step, MBT-B at {frames} frames: {seconds:.2f} s ({1 / seconds:.3f} samples/s), "
              f"{flops / 1e12:.3f} TFLOPs -> {flops / seconds / 1e9:.1f} GFLOP/s")  # fmt: skip
    per_sample = cpu_vit_step(args.steps)
    print(f"CPU step, timm ViT-B/16 224²: {per_sample:.2f} s per sample -> {vit / per_sample / 1e9:.1f} GFLOP/s")
    frames, rate = max(rates)
    cpu_step = rate / full  # samples/s of the 32-frame step at the FLOP rate of the largest measured one
    note = "measured" if frames == 32 else f"projected from the {frames}-frame step's FLOP rate"
    print(f"CPU step, MBT-B at 32 frames: {cpu_step:.4f} samples/s ({1 / cpu_step:.0f} s per clip; {note})")
    gpu = {name: n * vit / full for name, n in GPUS.items()}
    for name, n in GPUS.items():
        print(f"GPU step, MBT-B at 32 frames: {gpu[name]:.1f} samples/s on an {name}: {n:.0f} ViT-B/16 samples/s "
              f"= {n * vit / 1e12:.1f} TFLOP/s")  # fmt: skip

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "root", Path(tmp) / "cache"
        vggsound_root(root, args.clips)
        cls, params = resolve_vggsound(root, cache, [])
        cls.prepare(params, cache, out=io.StringIO())
        sources = [("cache", params)]
        if args.media:
            sources.append(("media files", params.model_copy(update={"cache": "none"})))
        for what, p in sources:
            for workers in (1, 2):
                r, per = loader_rate(cls, p, cache, workers, args.epochs, args.batch)
                need = {k: math.ceil(g * per) for k, g in gpu.items()}  # a free core per worker
                print(f"loader ({what}), {workers} worker(s): {r:.2f} samples/s ({per:.3f} CPU s per sample) = "
                      f"{r / cpu_step:.0f}x the CPU step; "
                      + "; ".join(f"{r / g:.2f}x the {k.split(' (')[0]} step ({need[k]} workers of a free core each "
                                  "to keep up)" for k, g in gpu.items()))  # fmt: skip
    torch.set_num_threads(threads)
    print(f"(load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
