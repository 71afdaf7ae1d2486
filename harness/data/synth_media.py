"""``harness synth``: a synthetic dataset written as the real ones are kept on disk, so the real path is tested.

Real MP4 files (H.264 video, AAC audio, written with PyAV) plus the annotation files of one dataset's layout, with its
exact file names and columns (``datasets/README.md``): VGGSound ``vggsound.csv`` + ``stat.csv``; AudioSet segment CSVs
(``#`` comment lines, quoted MID lists) + ``class_labels_indices.csv``; AVE ``Annotations.txt`` + ``*_order.h5``;
Kinetics-Sounds ``<split>/<class>/<clip>.mp4``; EPIC-KITCHENS-100 action CSVs + verb/noun class CSVs over long videos
holding several segments. Class lists have the cards' sizes (309, 527, 28, 32, 97 x 300).

The clips come from a small procedural generator rather than :mod:`harness.data.synthetic`, whose clips are
0.64-s and 4 frames long: here a clip lasts as long as the dataset's (10 s) at ``fps`` frames per second. A class
``k`` is a moving square of colour ``k`` on a noisy background and a tone of pitch ``k``, both present only while
its event lasts (AVE: seconds [start, end), 4-6 s long, so every clip changes between event and background;
elsewhere the whole clip). AudioSet clips hold two classes; an EPIC segment shows the noun's colour and sounds the
verb's pitch.
"""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

LAYOUTS = ("vggsound", "audioset", "ave", "kinetics_sounds", "epic_kitchens_100")  # MP4 files, the media pipeline
FRAME_LAYOUTS = ("avsbench",)  # PNG frames + wavs, read by their own loaders (harness.data.avsbench)
USED = 6  # classes the generated clips actually use (the class lists are full size)


def _colour(k: int) -> np.ndarray:
    h = (k * 0.618034) % 1.0  # golden-ratio hues: neighbours differ
    return np.array([0.5 + 0.5 * math.cos(2 * math.pi * (h + o)) for o in (0, 1 / 3, 2 / 3)])


def _pitch(k: int) -> float:
    return 220.0 * 2 ** ((k % 36) / 9)


def render(events: list[tuple[int, float, float]], seconds: float, rng: np.random.Generator, fps: int = 8,
           size: tuple[int, int] = (48, 64), sample_rate: int = 16000,
           sounds: list[tuple[int, float, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frames uint8 (N, H, W, 3) showing ``events`` = [(class, start s, end s)] and a float32 waveform sounding
    ``sounds`` (default: the same events)."""
    h, w = size
    n = max(1, round(seconds * fps))
    t = (np.arange(n) + 0.5) / fps
    img = np.clip(0.1 + 0.05 * rng.standard_normal((n, h, w, 3)), 0, 1)
    samples = round(seconds * sample_rate)
    ts = np.arange(samples) / sample_rate
    wave = 0.05 * rng.standard_normal(samples)
    r = max(3, h // 6)
    for k, a, b in events:
        x0, y0 = rng.uniform(r, w - r), rng.uniform(r, h - r)
        vx, vy = rng.uniform(-8, 8, 2)
        for i in np.nonzero((t >= a) & (t < b))[0]:
            cx = int(np.clip(x0 + vx * t[i], r, w - r - 1))
            cy = int(np.clip(y0 + vy * t[i], r, h - r - 1))
            img[i, cy - r : cy + r, cx - r : cx + r] = _colour(k)
    for j, (k, a, b) in enumerate(events if sounds is None else sounds):
        on = (ts >= a) & (ts < b)
        wave += on * 0.4 / (1 + j) * np.sin(2 * math.pi * _pitch(k) * ts + rng.uniform(0, 6.28))
    return (img * 255).round().astype(np.uint8), wave.astype(np.float32)


def write_mp4(path: Path, frames: np.ndarray, wave: np.ndarray, fps: int = 8, sample_rate: int = 16000,
              preset: str = "ultrafast") -> None:  # fmt: skip
    """An MP4 with one H.264 video stream (yuv420p, x264 ``preset``) and one mono AAC audio stream."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=Fraction(fps))
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": preset}
        a = c.add_stream("aac", rate=sample_rate)
        a.layout = "mono"
        for f in frames:
            c.mux(vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(vs.encode())
        for at in range(0, len(wave), 1024):
            af = av.AudioFrame.from_ndarray(wave[None, at : at + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = sample_rate, at
            c.mux(a.encode(af))
        c.mux(a.encode())


def _ytid(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, 64, 11))


def _split(i: int, n: int) -> str:
    """About 60 % train, 20 % val, 20 % test, each non-empty for n >= 3."""
    return "test" if i % 5 == 4 else ("val" if i % 5 == 2 else "train")


def _csv(path: Path, rows: list, header: list[str] | None = None) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def synth(out: Path, layout: str, clips: int = 12, seed: int = 0, seconds: float = 10.0) -> dict:
    """Write ``clips`` synthetic clips of ``layout`` under ``out``; returns {"clips", "files"} for the message."""
    if layout not in (*LAYOUTS, *FRAME_LAYOUTS):
        raise ValueError(f"--layout {layout!r}: must be one of {', '.join((*LAYOUTS, *FRAME_LAYOUTS))}")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    return globals()[f"_{layout}"](out, clips, rng, seconds)


def _vggsound(out: Path, n: int, rng, seconds: float) -> dict:
    classes = [f"synthetic sound {k:03d}" if k % 50 else f"synthetic, sound {k:03d}" for k in range(309)]
    _csv(out / "stat.csv", [(c, 10, "synthetic") for c in classes])
    rows = []
    for i in range(n):
        ytid, start, k = _ytid(rng), int(rng.integers(0, 300)), i % USED
        split = "test" if _split(i, n) == "test" else "train"  # vggsound.csv has train and test only
        write_mp4(out / f"video/{ytid}_{start:06d}.mp4", *render([(k, 0, seconds)], seconds, rng))
        rows.append((ytid, start, sorted(classes)[k], split))
    _csv(out / "vggsound.csv", rows)
    return {"clips": n, "files": ["vggsound.csv", "stat.csv", "video/"]}


def _audioset(out: Path, n: int, rng, seconds: float) -> dict:
    mids = [f"/m/synth{k:03d}" for k in range(527)]
    _csv(out / "class_labels_indices.csv", [(k, m, f"Synthetic {k}") for k, m in enumerate(mids)],
         ["index", "mid", "display_name"])  # fmt: skip
    per = {"balanced_train_segments": [], "eval_segments": []}
    for i in range(n):
        subset = "eval_segments" if _split(i, n) == "test" else "balanced_train_segments"
        ytid, start = _ytid(rng), float(rng.integers(0, 300))
        ks = sorted({i % USED, (i * 7 + 3) % USED})
        write_mp4(out / f"{subset}/{ytid}.mp4", *render([(k, 0, seconds) for k in ks], seconds, rng))
        per[subset].append(f'{ytid}, {start:.3f}, {start + seconds:.3f}, "{",".join(mids[k] for k in ks)}"')
    for subset, rows in per.items():
        head = ["# Segments csv created by harness synth",
                f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=527, num_positive_labels=0",
                "# YTID, start_seconds, end_seconds, positive_labels"]  # fmt: skip
        (out / f"{subset}.csv").write_text("\n".join(head + rows) + "\n")
    return {"clips": n, "files": [f"{s}.csv" for s in per] + ["class_labels_indices.csv"]}


def _ave(out: Path, n: int, rng, seconds: float) -> dict:
    import h5py
    import yaml

    from harness.registry import datasets_dir

    classes = yaml.safe_load((datasets_dir() / "ave.yaml").read_text())["params"]["classes"]
    lines, order = [], {"train": [], "val": [], "test": []}
    for i in range(n):
        ytid, k = _ytid(rng), i % USED
        # 4-6 s events at any start: the label changes within every clip, so one class per clip gets at most
        # max(event, background) of its seconds (57 % on average, 50-60 % per clip) and per-second scoring can win
        span = max(int(seconds), 2)
        length = min(int(rng.integers(4, 7)), span - 1)
        a = int(rng.integers(0, span - length + 1))
        b = a + length
        write_mp4(out / f"AVE/{ytid}.mp4", *render([(k, a, b)], seconds, rng))
        lines.append(f"{classes[k]}&{ytid}&good&{a}&{b}")
        order[_split(i, n)].append(i)
    (out / "Annotations.txt").write_text("\n".join(lines) + "\n")
    for split, rows in order.items():
        with h5py.File(out / f"{split}_order.h5", "w") as f:
            f.create_dataset("order", data=np.array(rows, dtype=np.int64))
    return {"clips": n, "files": ["Annotations.txt", "train_order.h5", "val_order.h5", "test_order.h5", "AVE/"]}


def _kinetics_sounds(out: Path, n: int, rng, seconds: float) -> dict:
    classes = [f"synthetic_action_{k:02d}" for k in range(32)]
    for c in classes:
        (out / "train" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % USED
        stem = f"{_ytid(rng)}_{int(rng.integers(0, 300)):06d}_{int(rng.integers(300, 600)):06d}"
        write_mp4(out / _split(i, n) / classes[k] / f"{stem}.mp4", *render([(k, 0, seconds)], seconds, rng))
    return {"clips": n, "files": ["train/", "val/", "test/"]}


def _epic_kitchens_100(out: Path, n: int, rng, seconds: float) -> dict:
    verbs = [(k, f"verb{k}", json.dumps([f"verb{k}"]).replace('"', "'"), "synthetic") for k in range(97)]
    nouns = [(k, f"noun{k}", json.dumps([f"noun{k}"]).replace('"', "'"), "synthetic") for k in range(300)]
    _csv(out / "EPIC_100_verb_classes.csv", verbs, ["id", "key", "instances", "category"])
    _csv(out / "EPIC_100_noun_classes.csv", nouns, ["id", "key", "instances", "category"])
    header = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
              "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
              "all_noun_classes"]  # fmt: skip
    per_video, seg = 4, 3.0  # segments of 3 s, 4 per video, 1 s apart
    rows = {"EPIC_100_train.csv": [], "EPIC_100_validation.csv": []}
    fps = 8
    for v in range((n + per_video - 1) // per_video):
        pid, vid = f"P{v // 2 + 1:02d}", f"P{v // 2 + 1:02d}_{v % 2 + 1:02d}"
        events, sounds, length = [], [], per_video * (seg + 1)
        for j in range(min(per_video, n - v * per_video)):
            i = v * per_video + j
            verb, noun = i % USED, (i * 5 + 1) % USED
            a, b = j * (seg + 1) + 0.5, j * (seg + 1) + 0.5 + seg
            events.append((noun, a, b)), sounds.append((verb, a, b))
            csv_name = "EPIC_100_validation.csv" if _split(i, n) == "test" else "EPIC_100_train.csv"
            stamp = lambda s: f"00:00:{s:05.2f}"  # noqa: E731
            rows[csv_name].append([f"{vid}_{j}", pid, vid, stamp(a), stamp(a), stamp(b), round(a * fps),
                                   round(b * fps), f"verb{verb} noun{noun}", f"verb{verb}", verb, f"noun{noun}", noun,
                                   f"['noun{noun}']", f"[{noun}]"])  # fmt: skip
        frames, wave = render(events, length, rng, fps, sounds=sounds)
        write_mp4(out / pid / "videos" / f"{vid}.MP4", frames, wave, fps)
    for name, rs in rows.items():
        _csv(out / name, rs, header)
    return {"clips": n, "files": [*rows, "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"]}


def _avsbench(out: Path, n: int, rng, seconds: float) -> dict:
    """AVSBench S4: PNG frames, wavs and masks of harness.data.synthetic_avs's clips (``harness.data.avsbench``)."""
    from harness.data.avsbench import write_synthetic

    return write_synthetic(out, n, seed=int(rng.integers(2**31)))
