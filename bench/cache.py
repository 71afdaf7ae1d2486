"""The prepared cache at the VGGSound card's settings: prepare speed against ffmpeg, size, fidelity, view decode.

Writes ``--clips`` 10-s, 25-fps clips of ``--height`` x ``--width`` (``bench/media.py``), then measures side by side:

- prepare: seconds per clip of ``harness.data.prepare.prepare`` against ``ffmpeg -i X -f null -`` on the same
  files, in rounds that alternate the commands (the machine is shared: medians of ``--rounds``). Each prepare runs in
  its own Python process, timed inside it after the imports and one warm-up clip (what ``harness prepare``'s size
  estimate decodes first anyway); CPU = user + sys of the process, its threads and its decoding workers. Two budgets:
  *one core* (every command pinned to one core: ffmpeg ``-threads 1``, prepare with ``threads=1`` in one process)
  and *all cores* (ffmpeg's default threads; prepare in one process with FFmpeg's threads, and ``--workers 2``).
  ``--before REV`` also times the prepare of a git revision (``git archive`` of its ``harness/`` and ``datasets/``),
  e.g. ``--before main``: before and after in one run.
- size: bytes per clip on disk against the raw uint8 views of the old format (and ``harness prepare``'s estimate);
- fidelity: PSNR of the cached frames against an independent reference: the frames PyAV decodes at the file's own
  size, resized by torchvision's antialiased bilinear in float; also the resize alone and the JPEG alone;
- view: one training view cut from the cache, against decoding its frames from the MP4.

    .venv/bin/python bench/cache.py [--clips 6] [--rounds 3] [--before main] [--decoder pyav|torchcodec]
        [--preset ultrafast|medium]

``datasets/README.md`` holds the latest figures (prepare vs ffmpeg before and after, size, PSNR). On a shared
machine read the CPU ratios: the wall times then measure the load.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from media import resolve_vggsound, vggsound_root  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMED_PREPARE = r"""
import inspect, io, json, os, resource, sys, time
from pathlib import Path
root, cache, workers, threads, decoder, core = sys.argv[1:7]
if core != "-":
    os.sched_setaffinity(0, {int(core)})
import torch
from harness.data import prepare as P
from harness.run.prepare import resolve_params
cls, params = resolve_params("vggsound", root, cache, [f"decoder={decoder}"])
kw = {"threads": int(threads)} if threads != "-" and "threads" in inspect.signature(P.prepare).parameters else {}
records = cls.list_clips(params)
P.estimate(records[:1], Path(root), cls.settings(params), sample=1)  # warm-up
r0, c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
P.prepare(records, Path(root), cls.cache_folder(params, cache), cls.settings(params), int(workers), out=io.StringIO(),
          **kw)
wall, cpu, r1 = time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_CHILDREN)
cpu += r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"wall": wall / len(records), "cpu": cpu / len(records)}))
"""


def one_core() -> int:
    return max(os.sched_getaffinity(0))


def ffmpeg(paths: list[Path], threads: int | None) -> dict:
    """Per-file wall and CPU seconds of ``ffmpeg [-threads 1] -i X -f null -`` (``threads=1``: pinned to one core)."""
    args = ["-threads", "1"] if threads == 1 else []
    pin = (lambda: os.sched_setaffinity(0, {one_core()})) if threads == 1 else None
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    for p in paths:
        subprocess.run(["ffmpeg", "-v", "error", *args, "-i", str(p), "-f", "null", "-"], check=True, preexec_fn=pin)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall / len(paths), "cpu": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / len(paths)}


def timed_prepare(tree: Path, root: Path, workers: int, threads: int | None, decoder: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        argv = [str(root), cache, str(workers), "-" if threads is None else str(threads), decoder,
                str(one_core()) if threads == 1 else "-"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(tree)}
        # run in the tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
        run = subprocess.run([sys.executable, "-c", TIMED_PREPARE, *argv], env=env, cwd=tree, capture_output=True,
                             text=True)  # fmt: skip
        if run.returncode:
            raise RuntimeError(f"prepare in {tree} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])


def prepare_speed(args, root: Path, paths: list[Path], before: Path | None) -> None:
    here = REPO
    configs = {  # name -> what runs (prepare: one process with FFmpeg's threads; -w2: --workers 2)
        "ffmpeg -threads 1, 1 core": lambda: ffmpeg(paths, 1),
        "prepare threads=1, 1 core": lambda: timed_prepare(here, root, 0, 1, args.decoder),
        "ffmpeg": lambda: ffmpeg(paths, None),
        "prepare": lambda: timed_prepare(here, root, 0, None, args.decoder),
        "prepare -w2": lambda: timed_prepare(here, root, 2, None, args.decoder),
    }
    if before is not None:
        configs["before, 1 core"] = lambda: timed_prepare(before, root, 0, 1, args.decoder)
        configs["before"] = lambda: timed_prepare(before, root, 0, None, args.decoder)
        configs["before -w2"] = lambda: timed_prepare(before, root, 2, None, args.decoder)
    got: dict[str, list[dict]] = {k: [] for k in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # a different order each round
            got[name].append(configs[name]())
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu")} for k, v in got.items()}
    print(f"prepare ({args.decoder}; {args.rounds} rounds; s per clip, wall / CPU, median [min]):")
    for k, v in got.items():
        lo = {m: min(x[m] for x in v) for m in ("wall", "cpu")}
        print(f"  {k:38s} {med[k]['wall']:.3f} [{lo['wall']:.3f}] / {med[k]['cpu']:.3f} [{lo['cpu']:.3f}]")

    def ratio(a: str, b: str) -> str:
        """Median over rounds of the ratio within a round (both measured minutes apart at most)."""
        w = statistics.median(x["wall"] / y["wall"] for x, y in zip(got[a], got[b]))
        c = statistics.median(x["cpu"] / y["cpu"] for x, y in zip(got[a], got[b]))
        return f"{w:.2f}x wall, {c:.2f}x CPU"

    ref1, refn = "ffmpeg -threads 1, 1 core", "ffmpeg"
    print(f"prepare_vs_ffmpeg[1 core]: {ratio('prepare threads=1, 1 core', ref1)} (target <= 2)")
    print(f"prepare_vs_ffmpeg[all cores, 1 process]: {ratio('prepare', refn)}")
    print(f"prepare_vs_ffmpeg[all cores, --workers 2]: {ratio('prepare -w2', refn)}")
    print(f"--workers 2 vs 1 process (time per clip): {ratio('prepare -w2', 'prepare')}")
    if before is not None:
        print(f"before: prepare_vs_ffmpeg[1 core]: {ratio('before, 1 core', ref1)}")
        print(f"before: prepare_vs_ffmpeg[all cores, 1 process]: {ratio('before', refn)}")
        print(f"before: prepare_vs_ffmpeg[all cores, --workers 2]: {ratio('before -w2', refn)}")
        print(f"after / before [1 core]: {ratio('prepare threads=1, 1 core', 'before, 1 core')}")
        print(f"after / before [1 process]: {ratio('prepare', 'before')}")
        print(f"after / before [--workers 2]: {ratio('prepare -w2', 'before -w2')}")
        print(f"before: --workers 2 vs 1 process: {ratio('before -w2', 'before')}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def cache_checks(args, root: Path, cache: Path) -> None:
    from torchvision.transforms.v2.functional import resize

    from harness.data.decode import decode

    cls, params = resolve_vggsound(root, cache, [f"decoder={args.decoder}"])
    cls.prepare(params, cache, out=(log := io.StringIO()))
    print(log.getvalue().splitlines()[0])  # the estimate line of `harness prepare`
    ds = cls(params, cache)
    shards = list(cls.cache_folder(params, cache).glob("shard-*.safetensors"))
    on_disk = sum(f.stat().st_size for f in shards) / len(ds.manifest["clips"])
    raw = cls.raw_bytes(params)
    print(f"on disk: {on_disk / 1e6:.3f} MB per clip; raw uint8 views of the old format {raw / 1e6:.2f} MB per clip "
          f"({raw / on_disk:.1f}x smaller)")  # fmt: skip
    split = ds.splits["train"]
    rec = split.records[0]
    _, n_frames, _, _ = split.source.info(rec)
    times = [(k + 0.5) / params.cache_fps for k in range(n_frames)]
    cached = torch.stack(split.source.load(rec, list(range(n_frames)))[0])
    scaled = decode(str(root / rec.file), times, 0.0, 10.0, 16000, params.stored_side, args.decoder).video
    full = decode(str(root / rec.file), times, 0.0, 10.0, 16000, None, args.decoder).video
    ref = resize(full.float(), list(cached.shape[-2:]), antialias=True).round().clamp(0, 255)
    print(f"PSNR of the cached frames vs the reference (float antialiased resize of the full frames): "
          f"{psnr(cached, ref):.1f} dB; the decoder's resize alone {psnr(scaled, ref):.1f} dB; the JPEG alone "
          f"{psnr(cached, scaled):.1f} dB ({len(times)} frames of {tuple(cached.shape[-2:])})")  # fmt: skip
    item, n = (0, 1, 0, 0), 5
    tick = time.perf_counter()
    for _ in range(n):
        split.sample(item)
    from_cache = (time.perf_counter() - tick) / n
    view = split.plan(item)
    t_src = [(k + 0.5) / params.cache_fps for k in sorted({k for k in view.frames if k >= 0})]
    tick = time.perf_counter()
    for _ in range(n):
        decode(str(root / rec.file), t_src, 0.0, 10.0, 16000, params.stored_side, args.decoder, threads=1)
    from_mp4 = (time.perf_counter() - tick) / n
    print(f"one training view ({params.frames} frames): {from_cache * 1e3:.0f} ms from the cache vs "
          f"{from_mp4 * 1e3:.0f} ms decoding its frames from the MP4 ({from_mp4 / from_cache:.1f}x)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--noisy", action="store_true", help="harness synth's noise-heavy frames instead")
    ap.add_argument("--preset", default="ultrafast", help="x264 preset of the clips (medium: B-frames, CABAC)")
    ap.add_argument("--decoder", default="pyav", choices=["pyav", "torchcodec"])
    ap.add_argument("--before", default=None, metavar="REV", help="also time the prepare of this git revision")
    ap.add_argument("--skip-speed", action="store_true", help="only size, fidelity and view decode")
    args = ap.parse_args()
    if not shutil.which("ffmpeg") and not args.skip_speed:
        raise SystemExit("bench/cache.py compares against the ffmpeg binary: install FFmpeg (or --skip-speed)")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        paths = vggsound_root(root, args.clips, args.height, args.width, args.noisy, args.preset)
        kind = "noisy" if args.noisy else "scene"
        print(f"{args.clips} clips of 10 s, 25 fps, {args.height}x{args.width}, x264 {args.preset}, {kind}; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        before = None
        if args.before:
            before = Path(tmp) / "before"
            before.mkdir()
            tar = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "harness", "datasets"],
                                 check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(before)], input=tar, check=True)
        if not args.skip_speed:
            prepare_speed(args, root, paths, before)
        cache_checks(args, root, Path(tmp) / "cache")
        print(f"(load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
