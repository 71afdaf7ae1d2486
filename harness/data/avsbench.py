"""AVSBench (Zhou et al., ECCV 2022, https://arxiv.org/abs/2207.05042): the ``avsbench`` format, its synthetic layout.

Layout of the release under ``root``, as OpenNLPLab/AVSBench's loaders read it (``avs_scripts/avs_s4/config.py`` and
``dataloader.py``, ``avs_scripts/avs_ms3/dataloader.py``), 5 frames (one per second) per 5-s video:

- S4 (single source), ``Single-source/``: ``s4_meta_data.csv`` (column 0 the video name, a ``category`` and a
  ``split`` column); ``s4_data/visual_frames/<split>/<category>/<name>/<name>_<i>.png``, i = 1..5;
  ``s4_data/gt_masks/<split>/<category>/<name>/<name>_<i>.png`` (train: i = 1 only; val, test: 1..5);
  ``s4_data/audio_wav/<split>/<category>/<name>.wav``.
- MS3 (multiple sources), ``Multi-sources/``: ``ms3_meta_data.csv`` (column 0 the name, ``split``);
  ``ms3_data/visual_frames/<name>/<name>.mp4_<i>.png``; ``ms3_data/gt_masks/<split>/<name>/<name>_<i>.png``
  (i = 1..5 in every split); ``ms3_data/audio_wav/<split>/<name>.wav`` (the wav folder's layout is the S4 one's
  without the category; the loaders above read the ``audio_log_mel`` pickles instead).

The loader reads the PNG frames and masks and the wav (not the VGGish log-mel pickles, whose features are VGGish's):
frames resized to ``image_size``, masks (any non-zero pixel = object) to ``mask_size`` by nearest neighbour, the wav
through the harness's Kaldi log-mel (``harness.data.synthetic.log_mel``), normalised with the train split's mean and
2 std. Frames without a mask (S4 train's 2..5) are labelled 255: the ``segmentation`` task leaves them out.
``prepare`` decodes everything once into ``<cache>/avsbench/<hash>.safetensors``; the dataset holds it in memory.

``write_synthetic`` writes :mod:`harness.data.synthetic_avs`'s clips in the S4 layout (``harness synth --layout
avsbench``): 5 frames, a 5-s wav, the sounding object's mask per frame, its shape as the category.

Shapes: ``N`` videos, ``T`` = 5 frames, ``H = W = image_size``, ``M`` = ``mask_size``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import wave
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.api import Dataset, DatasetError, InputSpec
from harness.data.base import TensorSplit
from harness.data.synthetic import SPLITS, log_mel

FRAMES = 5  # AVSBench: one frame per second of a 5-s video
SHAPES = ("square", "disc", "diamond")  # harness.data.synthetic's shapes, the synthetic layout's categories
IGNORE = 255


class AVSBenchConfig(BaseModel):
    """Keys under ``dataset:`` for the ``avsbench`` format."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="folder holding Single-source/ (S4) and/or Multi-sources/ (MS3)")
    subset: Literal["s4", "ms3"] = Field("s4", description="s4: single sound source; ms3: multiple sources")
    image_size: int = Field(224, ge=16, description="frames resized to image_size x image_size (AVSBench: 224)")
    mask_size: int = Field(0, ge=0, description="masks resized to mask_size (nearest); 0 = image_size")
    sample_rate: int = Field(16000, ge=8000, description="the wav's expected rate; another rate is resampled to it")
    n_mels: int = Field(128, ge=8, description="mel bins of the log-mel")
    n_frames: int = Field(500, ge=8, description="log-mel frames after pad/cut (10 ms hop: 500 = 5 s)")
    cache: str | None = Field(None, description="cache folder (default: the harness cache)")


def _paths(cfg: AVSBenchConfig, name: str, split: str, category: str) -> tuple[list[Path], list[Path], Path]:
    """(frames, masks, wav) of one video; masks lists the annotated frames only."""
    root = Path(cfg.root)
    if cfg.subset == "s4":
        base = root / "Single-source" / "s4_data"
        frames = [base / "visual_frames" / split / category / name / f"{name}_{i}.png" for i in range(1, 6)]
        masks = [base / "gt_masks" / split / category / name / f"{name}_{i}.png" for i in range(1, 6)]
        return frames, masks[:1] if split == "train" else masks, base / "audio_wav" / split / category / f"{name}.wav"
    base = root / "Multi-sources" / "ms3_data"
    frames = [base / "visual_frames" / name / f"{name}.mp4_{i}.png" for i in range(1, 6)]
    masks = [base / "gt_masks" / split / name / f"{name}_{i}.png" for i in range(1, 6)]
    return frames, masks, base / "audio_wav" / split / f"{name}.wav"


def list_videos(cfg: AVSBenchConfig) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(name, category)]}`` from the meta-data CSV.

    Raises:
        DatasetError: no CSV, no ``split`` column, or an empty split.
    """
    sub = ("Single-source", "s4_meta_data.csv") if cfg.subset == "s4" else ("Multi-sources", "ms3_meta_data.csv")
    path = Path(cfg.root, *sub)
    if not path.is_file():
        raise DatasetError(f"dataset.root={cfg.root!r}: no {'/'.join(sub)} (AVSBench {cfg.subset.upper()} meta data)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "split" not in rows[0]:
        raise DatasetError(f"{path}: needs a header with a 'split' column (AVSBench's meta data)")
    first = next(iter(rows[0]))
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for row in rows:
        if row["split"] in out:
            out[row["split"]].append((row[first], row.get("category", "")))
    if empty := [s for s, v in out.items() if not v]:
        raise DatasetError(f"{path}: no video in split(s) {', '.join(empty)}")
    return out


def _read_wav(path: Path, rate: int) -> torch.Tensor:
    with wave.open(str(path)) as w:
        width, channels, sr, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width != 2:
        raise DatasetError(f"{path}: {8 * width}-bit wav; the avsbench loader reads 16-bit PCM")
    x = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768).view(-1, channels).mean(1)
    if sr != rate:
        from torchaudio.functional import resample

        x = resample(x, sr, rate)
    return x


def _decode(cfg: AVSBenchConfig, name: str, split: str, category: str) -> tuple[torch.Tensor, ...]:
    """uint8 frames (T, 3, H, W), uint8 masks (T, M, M) (255 = not annotated), float log-mel (1, n_mels, n_frames)."""
    from PIL import Image

    frames, masks, wav = _paths(cfg, name, split, category)
    missing = [str(p) for p in [*frames, *masks, wav] if not p.is_file()]
    if missing:
        raise DatasetError(f"AVSBench video {name!r} ({split}): missing {missing[0]}" +
                           (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))  # fmt: skip
    s, m = cfg.image_size, cfg.mask_size or cfg.image_size
    video = np.stack([np.asarray(Image.open(p).convert("RGB").resize((s, s), Image.BILINEAR)) for p in frames])
    label = np.full((FRAMES, m, m), IGNORE, dtype=np.uint8)
    for i, p in enumerate(masks):
        label[i] = np.asarray(Image.open(p).convert("L").resize((m, m), Image.NEAREST)) > 0
    audio = log_mel(_read_wav(wav, cfg.sample_rate)[None], cfg.sample_rate, cfg.n_mels, cfg.n_frames)[0]
    return torch.from_numpy(video).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(label), audio


def cache_folder(cfg: AVSBenchConfig, cache_dir: str | os.PathLike, videos: dict | None = None) -> Path:
    """``<cache>/avsbench/<hash of the parameters and the meta data's videos>/``."""
    videos = list_videos(cfg) if videos is None else videos
    blob = json.dumps({"v": 1, **cfg.model_dump(exclude={"cache"}), "videos": videos}, sort_keys=True).encode()
    return Path(cfg.cache or cache_dir) / "avsbench" / hashlib.sha256(blob).hexdigest()[:16]


class AVSBenchDataset(Dataset):
    """The ``avsbench`` format: S4 or MS3 decoded once into the cache, held in memory; label = masks (T, M, M).

    Args:
        params: the dataset's parameters.
        cache_dir: root of the harness cache.
    """

    Config = AVSBenchConfig
    from_files = True  # `harness prepare` decodes it (harness.run.prepare)

    def __init__(self, params: AVSBenchConfig, cache_dir: str | os.PathLike):
        from safetensors.torch import load_file

        super().__init__(params, cache_dir)
        manifest = self.prepare(params, cache_dir)
        flat = load_file(str(self.cache_folder(params, cache_dir) / "data.safetensors"))
        self.spec = input_spec(params)
        self.splits = {s: TensorSplit(s, flat[f"{s}/video"], flat[f"{s}/audio"], flat[f"{s}/mask"]) for s in SPLITS}
        self.fingerprint = manifest["hash"]

    @classmethod
    def input_spec(cls, params: AVSBenchConfig) -> InputSpec:
        return input_spec(params)

    @classmethod
    def cache_folder(cls, params: AVSBenchConfig, cache_dir: str | os.PathLike) -> Path:
        return cache_folder(params, cache_dir)

    @classmethod
    def prepare(cls, params: AVSBenchConfig, cache_dir: str | os.PathLike, **_: object) -> dict:
        """Decode every video of the meta data into one cache file (once); returns its manifest."""
        from harness.data.storage import save_atomic

        videos = list_videos(params)
        folder = cache_folder(params, cache_dir, videos)
        path, manifest_path = folder / "data.safetensors", folder / "manifest.json"
        if not manifest_path.exists():
            data = {}
            for split, items in videos.items():
                decoded = [_decode(params, name, split, category) for name, category in items]
                for key, i in (("video", 0), ("mask", 1), ("audio", 2)):
                    data[f"{split}/{key}"] = torch.stack([d[i] for d in decoded])
            mean, std = data["train/audio"].mean(), data["train/audio"].std()
            for split in SPLITS:  # AST-style, with the train split's statistics
                data[f"{split}/audio"] = ((data[f"{split}/audio"] - mean) / (2 * std)).to(torch.float16)
            save_atomic(data, path)
            counts = {s: len(v) for s, v in videos.items()}
            manifest = {"hash": folder.name, "decoder": "PIL + wave", "counts": counts}
            manifest_path.write_text(json.dumps(manifest, indent=1))  # last: a manifest means a complete cache
        return json.loads(manifest_path.read_text())


def input_spec(cfg: AVSBenchConfig) -> InputSpec:
    return InputSpec(FRAMES, cfg.image_size, cfg.n_mels, cfg.n_frames, num_classes=1)


def write_synthetic(out: Path, clips: int, seed: int = 0, image_size: int = 64) -> dict:
    """``clips`` synthetic AVS clips (at least 8 per split) in AVSBench's S4 layout under ``out``."""
    from harness.data.synthetic import generate
    from harness.data.synthetic_avs import SyntheticAVSConfig

    val = max(8, clips // 5)
    counts = {"train": max(8, clips - 2 * val), "val": val, "test": val}
    cfg = SyntheticAVSConfig(**{f"clips_{s}": n for s, n in counts.items()}, frames=FRAMES, slots=FRAMES,
                             image_size=image_size, audio_seconds=5.0, n_frames=500, seed=seed)  # fmt: skip
    data = generate(cfg, latents=True, masks=True, waves=True)
    base = out / "Single-source" / "s4_data"
    rows = []
    for split, d in data.items():
        for i in range(counts[split]):
            name, category = f"synth_{split}_{i:04d}", SHAPES[int(d["pitch"][i])]
            rows.append([name, category, category, split])
            folder = Path(split, category, name)
            for t in range(FRAMES):
                _png(base / "visual_frames" / folder / f"{name}_{t + 1}.png", d["video"][i, t].permute(1, 2, 0).numpy())
                if split != "train" or t == 0:  # S4 train annotates the first frame only
                    _png(base / "gt_masks" / folder / f"{name}_{t + 1}.png", d["mask"][i, t].numpy() * 255)
            _wav(base / "audio_wav" / split / category / f"{name}.wav", d["wave"][i].numpy(), cfg.sample_rate)
    meta = out / "Single-source" / "s4_meta_data.csv"
    with open(meta, "w", newline="") as f:
        csv.writer(f).writerows([["name", "sounding_shape", "category", "split"], *rows])
    return {"clips": sum(counts.values()), "files": ["Single-source/s4_meta_data.csv", "Single-source/s4_data/"]}


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array).astype(np.uint8)).save(path)


def _wav(path: Path, x: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
