"""Test media for the data benchmarks (``bench/cache.py``, ``bench/loader.py``): 10-s, 25-fps H.264 + AAC clips in
the VGGSound layout.

The frames are moving textured discs over gradients with mild sensor noise (``--noisy``: ``harness synth``'s
noise-heavy frames, a worst case for JPEG). ``preset`` is x264's: ``ultrafast`` (the default, as ``harness synth``
writes: Constrained Baseline, no B-frames, the cheapest H.264 to decode, so the hardest case for a prepare/ffmpeg
ratio) or e.g. ``medium`` (High profile with B-frames and CABAC, as YouTube-sourced downloads are encoded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.synth_media import write_mp4


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


def vggsound_root(root: Path, n: int, h: int = 360, w: int = 640, noisy: bool = False,
                  preset: str = "ultrafast") -> list[Path]:  # fmt: skip
    """``n`` clips under ``root`` in the VGGSound layout (``vggsound.csv``, ``stat.csv``, ``video/``), a third of
    them in test; returns the media paths."""
    from harness.data.synth_media import render

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if noisy:
            frames, wave = render([(i % 6, 0, 10)], 10.0, rng, fps=25, size=(h, w))
        else:
            frames = scene(10.0, 25, h, w, rng)
            wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * np.arange(160000) / 16000)).astype(np.float32)
        paths.append(root / f"video/clip{i:03d}_000000.mp4")
        write_mp4(paths[-1], frames, wave, 25, preset=preset)
    (root / "stat.csv").write_text("".join(f"c{k:03d},1,x\n" for k in range(309)))
    (root / "vggsound.csv").write_text("".join(f"clip{i:03d},0,c{i % 5:03d},{'train' if i % 3 else 'test'}\n"
                                               for i in range(n)))  # fmt: skip
    return paths


def resolve_vggsound(root: Path, cache: Path, overrides: list[str]):
    """``(format class, params)`` of the VGGSound card over ``root`` at the smallest ``val_fraction`` that leaves
    both train and val clips (a split's clips are chosen by a hash of their ids, so a fixed fraction of a few clips
    can empty one)."""
    from harness.run.prepare import resolve_params

    for fraction in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        cls, params = resolve_params("vggsound", str(root), str(cache), [*overrides, f"val_fraction={fraction}"])
        if {"train", "val"} <= {r.split for r in cls.list_clips(params)}:
            return cls, params
    raise SystemExit(f"no val_fraction leaves both train and val clips among the clips under {root}: use more clips")
