"""Bytes per clip and prepare time of every dataset card's cache, measured on the same generated clips.

For each card (``datasets/*.yaml``) the clips of ``bench/media.py`` (10 s, 25 fps, 360x640, H.264 + AAC) are
prepared with that card's cache settings (``cache_fps``, stored short side, JPEG quality, log-mel keys), one clip at a
time in this process with one FFmpeg thread (``harness.data.prepare.decode_clip``): MB per clip as stored (frames +
log-mel + offsets; a shard adds a few kB of metadata per 64 clips), the raw uint8 views of the format before the
JPEG cache for comparison, and seconds per clip: wall and CPU (this process's user + sys; on a shared machine the
CPU seconds are what one free core would take, so the time per 1,000 clips is computed from them). EPIC-KITCHENS
segments are taken as 3-s windows ([2, 5) s) of the clips; its real videos are 1080p at 50 or 60 fps, so its decode
time here is a lower bound. The projected size uses the clip counts of ``datasets/README.md``.

    .venv/bin/python bench/cards.py [--clips 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from media import vggsound_root  # noqa: E402

CLIPS = {"vggsound": 198_000, "audioset": 38_950, "ave": 4_143, "kinetics_sounds": 28_000,
         "epic_kitchens_100": 76_885}  # fmt: skip  # listed clips (datasets/README.md); AudioSet: AS-mini


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args()
    from harness.data.prepare import clip_bytes, decode_clip
    from harness.run.prepare import resolve_params

    torch.set_num_threads(1)
    print(f"{args.clips} clips of 10 s, 25 fps, 360x640; one process, one FFmpeg thread; load {os.getloadavg()[0]:.1f}")
    print(
        "| card | cache_fps | short side | MB per clip (old format) | x smaller | listed clips -> size | "
        "s per clip, wall / CPU | min per 1,000 clips, one core |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        paths = vggsound_root(Path(tmp), args.clips)
        for card, listed in CLIPS.items():
            cls, params = resolve_params(card, tmp, None, [])
            s = cls.settings(params)
            start, stop = (2.0, 5.0) if card == "epic_kitchens_100" else (0.0, params.clip_seconds)
            decode_clip((str(paths[0]), start, stop, s), threads=1)  # warm-up
            sizes, times, cpus = [], [], []
            for p in paths:
                tick, cpu = time.perf_counter(), time.process_time()
                sizes.append(clip_bytes(decode_clip((str(p), start, stop, s), threads=1)))
                times.append(time.perf_counter() - tick)
                cpus.append(time.process_time() - cpu)
            mb, raw = statistics.mean(sizes) / 1e6, cls.raw_bytes(params) / 1e6
            sec, cpu = statistics.median(times), statistics.median(cpus)
            print(f"| `{card}` | {params.cache_fps:g} | {params.stored_side} | {mb:.2f} ({raw:.2f}) | {raw / mb:.1f} "
                  f"| {listed:,} -> {mb * listed / 1e3:.0f} GB | {sec:.2f} / {cpu:.2f} "
                  f"| {cpu * 1000 / 60:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
