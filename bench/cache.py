"""The prepared cache at a card's settings: size, fidelity, prepare speed, and whether the loader can feed a GPU.

Writes ``--clips`` 10-s, 25-fps MP4 clips of ``--height`` x ``--width`` (moving shapes over gradients with mild
sensor noise, H.264 + AAC; and, with ``--noisy``, ``harness synth``'s noise-heavy frames, a worst case for JPEG),
then, in one process and side by side:
- size: bytes per clip of the cache at the card's settings against the raw uint8 views of the old format (printed by
  ``harness prepare``'s estimate), and the PSNR of the cached frames decoded back against the same frames decoded
  from the MP4 at the cache's short side;
- prepare: seconds per clip of the prepare pass (one process) against the reference decode of the same files:
  ``ffmpeg -i X -f null -`` when an ffmpeg binary is on PATH, else PyAV decoding every frame of both streams;
- decode: a training view (T frames cropped and resized) cut from the cache against the same frames decoded from the
  source MP4;
- loader: samples/s of the train split's DataLoader with 1 and 2 workers at ViT-B/16 input sizes, against the
  samples/s of one ViT-B/16 MBT training step (forward + backward + AdamW) measured here on the CPU, and the
  projected ratio for a GPU step: ``GPU_TFLOPS`` sustained (NVIDIA's A100 datasheet: 312 dense BF16 TFLOPS; at an
  assumed 40 % model-FLOPs utilisation: 125 TFLOPS) over 3 x the model's forward FLOPs per clip.

    .venv/bin/python bench/cache.py [--dataset vggsound] [--clips 6] [--frames 32] [--steps 1]
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GPU_TFLOPS = 312 * 0.40  # A100 dense BF16 peak (NVIDIA datasheet) x an assumed 40 % model-FLOPs utilisation


def scene(seconds: float, fps: int, h: int, w: int, rng) -> np.ndarray:
    """Frames (N, h, w, 3) uint8: two gradients, three moving textured discs, noise of std 2 levels."""
    n = round(seconds * fps)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 37 + yy / 53)], -1) * 180 + 30
    tex = rng.uniform(-25, 25, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    out = np.empty((n, h, w, 3), np.uint8)
    discs = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-60, 60), rng.uniform(-40, 40), rng.uniform(30, 80),
              rng.uniform(0, 255, 3)) for _ in range(3)]  # fmt: skip
    for i in range(n):
        img = base.copy()
        t = i / fps
        for x0, y0, vx, vy, r, c in discs:
            m = (xx - (x0 + vx * t) % w) ** 2 + (yy - (y0 + vy * t) % h) ** 2 < r**2
            img[m] = c + tex[m]
        out[i] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255)
    return out


def write_clips(folder: Path, n: int, h: int, w: int, noisy: bool) -> list[Path]:
    from harness.data.synth_media import render, write_mp4

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if noisy:
            frames, wave = render([(i % 6, 0, 10)], 10.0, rng, fps=25, size=(h, w))
        else:
            frames = scene(10.0, 25, h, w, rng)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(160000) / 16000)).astype(np.float32)
        paths.append(folder / f"video/clip{i:03d}_000000.mp4")
        write_mp4(paths[-1], frames, wave, fps=25)
    return paths


def reference_decode(paths: list[Path]) -> tuple[float, str]:
    """Seconds per file of the reference decode, and what it was."""
    ffmpeg = shutil.which("ffmpeg")
    tick = time.perf_counter()
    for p in paths:
        if ffmpeg:
            subprocess.run([ffmpeg, "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"], check=True)
        else:
            import av

            with av.open(str(p)) as c:
                for _ in c.decode(*c.streams):
                    pass
    return (time.perf_counter() - tick) / len(paths), ("ffmpeg -f null" if ffmpeg else "PyAV decode of every frame")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def model_step(params, frames: int, steps: int) -> tuple[float, float]:
    """(samples/s of one MBT ViT-B/16 training step on this CPU, forward GFLOPs per clip)."""
    from harness.config import RunSpec
    from harness.models.complexity import forward_flops
    from harness.run.trial import build_model

    spec = RunSpec.from_dict({"name": "b", "dataset": {"name": "vggsound", **params.model_dump(mode="json")},
                              "backbone": {"name": "vit_b16"}, "method": {"name": "mbt"}})  # fmt: skip
    from harness.registry import FORMATS

    ispec = FORMATS.get("vggsound_csv").input_spec(params)
    method, task = build_model(spec, ispec)
    gflops = forward_flops(method, task, ispec)["gflops"]
    opt = torch.optim.AdamW([p for m in (method, task) for p in m.parameters()], lr=1e-4)
    batch = {"video": torch.randn(1, frames, 3, 224, 224), "audio": torch.randn(1, 1, 128, params.target_frames),
             "label": torch.zeros(1, dtype=torch.long), "id": ["x"], "audio_present": torch.ones(1, dtype=torch.bool),
             "video_present": torch.ones(1, dtype=torch.bool)}  # fmt: skip
    times = []
    for _ in range(steps + 1):  # the first one warms up
        tick = time.perf_counter()
        loss = task.loss(method(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tick)
    return 1 / min(times[1:]), gflops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="vggsound")
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--frames", type=int, default=32, help="video frames of the model step and loader (card: 32)")
    ap.add_argument("--steps", type=int, default=1, help="timed model steps (after one warm-up)")
    ap.add_argument("--noisy", action="store_true", help="harness synth's noise-heavy frames instead")
    args = ap.parse_args()
    from harness.data import jpeg
    from harness.data.decode import decode
    from harness.data.prepare import grid
    from harness.run.prepare import resolve_params

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "root", Path(tmp) / "cache"
        paths = write_clips(root, args.clips, args.height, args.width, args.noisy)
        (root / "stat.csv").write_text("".join(f"c{k:03d},1,x\n" for k in range(309)))
        (root / "vggsound.csv").write_text("".join(f"clip{i:03d},0,c000,{'train' if i % 3 else 'test'}\n"
                                                   for i in range(args.clips)))  # fmt: skip
        cls, params = resolve_params(args.dataset, str(root), str(cache), [f"frames={args.frames}",
                                                                            "val_fraction=0.3"])  # fmt: skip
        print(f"{args.clips} clips of 10 s, 25 fps, {args.height}x{args.width}, {'noisy' if args.noisy else 'scene'}; "
              f"card {args.dataset}: cache_fps {params.cache_fps}, short side {params.stored_side}, "
              f"JPEG quality {params.jpeg_quality}")  # fmt: skip
        from harness.data.prepare import prepare

        cls.prepare(params, cache, out=(log := io.StringIO()), dry_run=True)
        print(log.getvalue().splitlines()[0])
        tick = time.perf_counter()
        folder = cls.cache_folder(params, cache)
        manifest = prepare(cls.list_clips(params), root, folder, cls.settings(params), out=io.StringIO())
        prep = (time.perf_counter() - tick) / args.clips
        ref, what = reference_decode(paths)
        print(f"prepare: {prep:.3f} s/clip vs {what} {ref:.3f} s/clip: {prep / ref:.2f}x")
        ds = cls(params, cache)
        shard_files = list((cache).glob("*/shard-*.safetensors"))
        on_disk = sum(f.stat().st_size for f in shard_files) / len(manifest["clips"])
        print(
            f"on disk: {on_disk / 1e6:.3f} MB per clip; raw uint8 views of the old format "
            f"{cls.raw_bytes(params) / 1e6:.2f} MB per clip ({cls.raw_bytes(params) / on_disk:.1f}x smaller)"
        )
        # fidelity: the cached frames decoded back against the same frames from the MP4 at the stored short side
        split = ds.splits["train"]
        rec = split.records[0]
        shard, row, _ = split.index[rec.id]
        sh = split._shards(shard)
        times = [(k + 0.5) / params.cache_fps for k in range(sh.n_frames(row))]
        src = decode(str(root / rec.file), times, 0.0, 10.0, 16000, params.stored_side).video
        back = torch.stack(jpeg.decode(sh.jpeg(row, list(range(len(times))))))
        print(
            f"PSNR of cached frames vs the MP4's: {psnr(back, src):.1f} dB ({len(times)} frames of "
            f"{tuple(back.shape[-2:])})"
        )
        # decode speed of one training view: from the cache vs from the MP4
        item = (0, 1, 0, 0)
        n = 5
        tick = time.perf_counter()
        for _ in range(n):
            split.sample(item)
        from_cache = (time.perf_counter() - tick) / n
        view = split.plan(item)
        t_src = [(k + 0.5) / params.cache_fps for k in sorted(set(view.frames))]
        tick = time.perf_counter()
        for _ in range(n):
            decode(str(root / rec.file), t_src, 0.0, 10.0, 16000, params.stored_side)
        from_mp4 = (time.perf_counter() - tick) / n
        print(
            f"one training view: {from_cache * 1e3:.0f} ms from the cache vs {from_mp4 * 1e3:.0f} ms decoding the "
            f"MP4 ({from_mp4 / from_cache:.1f}x)"
        )
        # loader vs model step
        step, gflops = model_step(params, args.frames, args.steps)
        gpu = GPU_TFLOPS * 1e12 / (3 * gflops * 1e9)
        print(
            f"MBT ViT-B/16 step here: {step:.3f} samples/s; forward {gflops:.0f} GFLOPs/clip -> assumed GPU "
            f"{gpu:.0f} samples/s ({GPU_TFLOPS:.0f} TFLOPS sustained)"
        )
        for workers in (1, 2):
            p = params.model_copy(update={"loader_workers": workers})
            train = cls(p, cache).splits["train"]
            list(train.batches(2, shuffle=True, seed=0))  # workers start
            tick, seen = time.perf_counter(), 0
            for epoch in range(1, 4):
                for b in train.batches(2, shuffle=True, seed=epoch):
                    seen += len(b["id"])
            rate = seen / (time.perf_counter() - tick)
            print(
                f"loader, {workers} worker(s): {rate:.1f} samples/s = {rate / step:.1f}x the CPU step, "
                f"{rate / gpu:.3f}x the assumed GPU step ({math.ceil(gpu / (rate / workers))} workers to keep up)"
            )
        sample = grid(10.0, params.cache_fps)
        print(f"({len(sample)} cached frames per clip)")


if __name__ == "__main__":
    main()
