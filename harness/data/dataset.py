"""Datasets read from media files through the prepared cache (:mod:`harness.data.prepare`).

:class:`PreparedDataset` is the base of every real-data format loader: a subclass says how to list the clips
(``list_clips``: annotations -> :class:`ClipRecord`s with their labels) and how to batch labels (``label_batch``); the
base prepares the cache when it is absent and serves the splits. A batch (``harness.api.inputs``): ``video`` float (B,
T, 3, H, W) normalised with the card's pixel mean/std, ``audio`` float (B, 1, n_mels, n_frames) normalised log-mel,
``label`` (the format's kind), ``id`` list[str], ``audio_present`` (False where the file has no audio stream) and
``video_present`` bool (B,).

Views: every clip is cached as V = ``test_clips`` temporal windows. The test split yields all V views of a clip
under the same id (the evaluator averages over equal ids), val the middle one, train one drawn per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from harness.api import Dataset, InputSpec
from harness.data.annotations import ClipRecord, unique_clips
from harness.data.frontend import FrontEndConfig, fbank_settings, normalise
from harness.data.prepare import prepare
from harness.data.shards import ShardReader, settings_hash

SPLITS = ("train", "val", "test")


class PreparedConfig(FrontEndConfig):
    """Keys shared by every real-data format (under ``dataset:``); the card sets them, a run may override them."""

    root: str = Field(description="folder holding the dataset's annotation files and media (see datasets/README.md)")
    cache: str | None = Field(None, description="prepared-cache folder; null = <cache_dir>/prepared/<format>-<root>")
    num_classes: int = Field(ge=1, description="classes of the class list; the loader checks the file agrees")
    clip_seconds: float = Field(10.0, gt=0, description="clip length in seconds, from the clip's start")
    frames: int = Field(8, ge=1, description="video frames per view (T), at the centres of T equal slots")
    image_size: int = Field(224, ge=8, description="frame height = width after the centre crop")
    resize: int | None = Field(None, ge=8, description="short side before the centre crop; null = image_size")
    window_seconds: float | None = Field(None, gt=0, description="video window of one view; null = the whole clip")
    audio_seconds: float | None = Field(None, gt=0, description="audio window of one view (centred on the video's)")
    test_clips: int = Field(1, ge=1, description="views per test clip (linspace windows), averaged by the evaluator")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of train held out as val where no val list exists")
    pixel_mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel mean of pixels in [0,1]")
    pixel_std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel std ((0.5,)*3: [-1, 1])")
    decoder: Literal["auto", "torchcodec", "pyav"] = Field("auto", description="auto: torchcodec, else PyAV")


def holdout(clip_id: str, fraction: float) -> bool:
    """Whether a train clip goes to val: a stable hash of its id, so the split survives missing files."""
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) < fraction * 2**32


class PreparedSplit:
    """One split served from the cache's shards (memory-mapped safetensors), one batch read ahead in a thread."""

    def __init__(self, name: str, records: list[ClipRecord], index: dict, folder: Path, n_views: int, label_batch,
                 params: PreparedConfig):  # fmt: skip
        self.name, self.records, self.index, self.folder = name, records, index, folder
        self.n_views, self.label_batch, self.params = n_views, label_batch, params
        self._shard = ShardReader(folder)
        p = params
        self._mean = torch.tensor(p.pixel_mean).view(1, 1, 3, 1, 1) * 255
        self._scale = 1 / (torch.tensor(p.pixel_std).view(1, 1, 3, 1, 1) * 255)

    def __len__(self) -> int:
        return len(self.records) * (self.n_views if self.name == "test" else 1)

    def _items(self, shuffle: bool, seed: int) -> list[tuple[int, int]]:
        n, v = len(self.records), self.n_views
        if self.name == "test":
            return [(i, j) for i in range(n) for j in range(v)]
        g = torch.Generator().manual_seed(seed)
        views = torch.randint(0, v, (n,), generator=g).tolist() if self.name == "train" else [v // 2] * n
        return list(zip(range(n), views))

    def _batch(self, items: list[tuple[int, int]]) -> dict:
        video, fbank, present = [], [], []
        for i, v in items:
            shard, row, _ = self.index[self.records[i].id]
            f = self._shard(shard)
            video.append(f.get_slice("video")[row : row + 1, v])  # (1, T, 3, H, W)
            fbank.append(f.get_slice("fbank")[row : row + 1, v])  # (1, M, F)
            present.append(bool(f.get_slice("audio_present")[row : row + 1][0]))
        x = torch.cat(video).float().sub_(self._mean).mul_(self._scale)  # (B, T, 3, H, W)
        audio = normalise(torch.cat(fbank), self.params)[:, None]  # (B, 1, M, F)
        b = len(items)
        return {
            "video": x,
            "audio": audio,
            "label": self.label_batch([self.records[i].label for i, _ in items]),
            "id": [self.records[i].id for i, _ in items],
            "audio_present": torch.tensor(present, dtype=torch.bool),
            "video_present": torch.ones(b, dtype=torch.bool),
        }

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                shard: tuple[int, int] | None = None):  # fmt: skip
        """Yield batches in a seeded order (as :meth:`TensorSplit.batches`; ``shard=(rank, world)`` likewise)."""
        items = self._items(shuffle, seed)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)) if shuffle else None
        if order is not None:
            items = [items[k] for k in order.tolist()]
        stop = len(items) - len(items) % batch_size if drop_last and len(items) >= batch_size else len(items)
        groups = []
        for start in range(0, stop, batch_size):
            part = items[start : start + batch_size]
            if shard is not None:
                part = [part[k] for k in torch.arange(len(part)).tensor_split(shard[1])[shard[0]].tolist()]
            groups.append(part)
        with ThreadPoolExecutor(1) as ahead:
            nxt = ahead.submit(self._batch, groups[0]) if groups else None
            for k in range(len(groups)):
                batch = nxt.result()
                nxt = ahead.submit(self._batch, groups[k + 1]) if k + 1 < len(groups) else None
                yield batch


class PreparedDataset(Dataset):
    """Base of the real-data format loaders. Subclasses set ``Config`` and implement ``list_clips``/``label_batch``.

    Args:
        params: the validated dataset parameters (card + run overrides).
        cache_dir: the harness cache; the prepared clips go to ``params.cache`` or under ``<cache_dir>/prepared``.

    Attributes:
        spec, splits, fingerprint (the manifest hash), manifest, decoder (``"pyav 18.1.0"``).
    """

    Config: ClassVar[type[PreparedConfig]] = PreparedConfig
    format: ClassVar[str] = ""

    def __init__(self, params: PreparedConfig, cache_dir: str | os.PathLike):
        super().__init__(params, cache_dir)
        self.spec = self.input_spec(params)
        folder = self.cache_folder(params, cache_dir)
        records, _ = unique_clips(self.list_clips(params))  # as prepare() keeps them
        if not (folder / "manifest.json").exists():
            self.prepare(params, cache_dir)
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.decoder = self.manifest["decoder"]
        self.fingerprint = self.manifest["hash"]
        index = self.manifest["clips"]
        by_split = {s: [r for r in records if r.split == s and r.id in index] for s in SPLITS}
        for s, rs in by_split.items():
            if not rs:
                counts = self.manifest["counts"]
                raise ValueError(f"dataset {self.format}: no prepared clip in split {s!r} under {folder} (manifest "
                                 f"counts {counts}); check dataset.root and run `harness prepare`")  # fmt: skip
        views = params.test_clips
        self.splits = {
            s: PreparedSplit(s, rs, index, folder, views, self.label_batch, params) for s, rs in by_split.items()
        }

    def provenance(self) -> dict[str, str]:
        """The fingerprint, and which subset (manifest hash) was decoded by what."""
        return {**super().provenance(), "harness.manifest_hash": self.manifest["hash"], "harness.decoder": self.decoder}

    # -- what a format defines ---------------------------------------------------------------------------------

    @classmethod
    def list_clips(cls, params: PreparedConfig) -> list[ClipRecord]:
        """Every clip the annotations list, with split and label payload."""
        raise NotImplementedError

    @staticmethod
    def label_batch(labels: list):
        """Stack label payloads: int64 (B,) by default."""
        return torch.tensor(labels, dtype=torch.int64)

    @classmethod
    def input_spec(cls, params: PreparedConfig) -> InputSpec:
        return InputSpec(params.frames, params.image_size, params.n_mels, params.target_frames, params.num_classes)

    # -- shared ------------------------------------------------------------------------------------------------

    @classmethod
    def settings(cls, params: PreparedConfig) -> dict:
        """What decoding depends on: the cache folder's key."""
        fe = FrontEndConfig(**{k: getattr(params, k) for k in FrontEndConfig.model_fields})
        keys = ("clip_seconds", "frames", "image_size", "resize", "window_seconds", "audio_seconds", "decoder")
        return {"format": cls.format, **{k: getattr(params, k) for k in keys}, "views": params.test_clips,
                "frontend": fe.model_dump()}  # fmt: skip

    @classmethod
    def cache_folder(cls, params: PreparedConfig, cache_dir: str | os.PathLike) -> Path:
        s = cls.settings(params)
        fb = {k: v for k, v in s.items() if k != "frontend"} | {
            "fbank": fbank_settings(FrontEndConfig(**s["frontend"]))
        }
        if params.cache:
            base = Path(params.cache)
        else:
            tag = hashlib.sha1(str(Path(params.root).resolve()).encode()).hexdigest()[:8]
            base = Path(cache_dir) / "prepared" / f"{cls.format}-{tag}"
        return base / settings_hash(fb)

    @classmethod
    def prepare(cls, params: PreparedConfig, cache_dir: str | os.PathLike, workers: int = 0, strict: bool = False,
                out=None) -> dict:  # fmt: skip
        """Decode the listed clips into the cache (resuming), write manifest.json and return it."""
        import sys

        records = cls.list_clips(params)
        folder = cls.cache_folder(params, cache_dir)
        return prepare(records, Path(params.root), folder, cls.settings(params), workers, strict, out or sys.stdout)
