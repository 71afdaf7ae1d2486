"""Datasets read from media files through the prepared cache (:mod:`harness.data.prepare`).

:class:`PreparedDataset` is the base of every real-data format loader: a subclass says how to list the clips
(``list_clips``: annotations -> :class:`ClipRecord`s with their labels) and how to batch labels (``label_batch``); the
base prepares the cache when it is absent and serves the splits through a DataLoader (:mod:`harness.data.loader`).

A batch leaves the loader with ``video`` uint8 (B, T, 3, H, W) (pinned on CUDA), ``audio`` float (B, 1, n_mels,
n_frames) normalised log-mel (SpecAugment applied), ``label`` (the format's kind), ``id`` list[str],
``audio_present`` (False where the file has no audio stream), ``video_present`` bool (B,) and, when colour jitter is
on, ``colour`` (B, 4); :meth:`PreparedDataset.on_device` (both engines call it after moving the batch) jitters the
colours and normalises the pixels with the card's mean/std there, so methods see the sample contract.

Views (:mod:`harness.data.recipe`): train draws one window, crop, flip, colour and masks per clip and epoch; val
takes the centred view; test yields ``test_clips`` x ``test_crops`` views of each clip under the clip's id (the
evaluator averages over equal ids).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from harness.api import Dataset, DatasetError, InputSpec
from harness.data.annotations import ClipRecord, unique_clips
from harness.data.decode import DECODERS, resolve_decoder
from harness.data.frontend import FrontEndConfig, fbank_settings, fit_frames, normalise, spectrogram_frames
from harness.data.loader import SplitLoader
from harness.data.media import MediaSource, media_manifest
from harness.data.prepare import estimate, prepare
from harness.data.recipe import RecipeConfig, View, colour_jitter, draw_rng, in_fraction, plan_view
from harness.data.shards import ShardSource, settings_hash

SPLITS = ("train", "val", "test")


class PreparedConfig(FrontEndConfig, RecipeConfig):
    """Keys shared by every real-data format (under ``dataset:``); the card sets them, a run may override them."""

    root: str = Field(description="folder holding the dataset's annotation files and media (see datasets/README.md)")
    cache: str | None = Field(None, description="prepared-cache folder; null = <cache_dir>/prepared/<format>-<root>; "
                              "'none' = no cache: the loader's workers decode the media files")  # fmt: skip
    num_classes: int = Field(ge=1, description="classes of the class list; the loader checks the file agrees")
    clip_seconds: float = Field(10.0, gt=0, description="clip length in seconds, from the clip's start")
    frames: int = Field(8, ge=1, description="video frames per view (T), at the centres of T equal slots")
    image_size: int = Field(224, ge=8, description="frame height = width of a view (the crop's output size)")
    resize: int | None = Field(None, ge=8, description="short side the centre crop of image_size is taken from "
                               "(the crop covers image_size / resize of it); null = image_size")  # fmt: skip
    window_seconds: float | None = Field(None, gt=0, description="video window of one view; null = the whole clip")
    audio_seconds: float | None = Field(None, gt=0, description="audio window of one view (centred on the video's "
                                        "when sync); null = the whole clip")  # fmt: skip
    test_clips: int = Field(1, ge=1, description="temporal views per test clip (evenly spaced), averaged per clip")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of train held out as val where no val list exists")
    pixel_mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel mean of pixels in [0,1]")
    pixel_std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel std ((0.5,)*3: [-1, 1])")
    decoder: Literal[DECODERS] = Field(
        "pyav",
        description="pyav (FFmpeg in its wheels, the same everywhere), torchcodec (needs system FFmpeg), or "
        "auto: torchcodec where it loads",
    )
    cache_fps: float = Field(12.5, gt=0, description="frames per second the cache keeps of every clip (MBT: stride 2 "
                             "of 25 fps); windows and views are cut from these")  # fmt: skip
    cache_short_side: int | None = Field(None, ge=8, description="short side of the cached frames (aspect kept); "
                                         "null = resize (or image_size)")  # fmt: skip
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the cached frames")

    @model_validator(mode="after")
    def _consistent(self) -> PreparedConfig:
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize={self.resize} is smaller than image_size={self.image_size}; the crop is taken "
                             "from a frame whose short side is resize")  # fmt: skip
        if self.resize is not None and self.resize > 2 * self.image_size:
            raise ValueError(
                f"resize={self.resize} with image_size={self.image_size} would crop the central "
                f"{self.image_size / self.resize:.0%} of the frame; set resize with image_size (the cards' ratio "
                f"256/224: resize={round(self.image_size * 256 / 224)})"
            )
        if self.window_seconds is not None and self.frames / self.window_seconds > self.cache_fps * 1.001:
            raise ValueError(f"frames={self.frames} in window_seconds={self.window_seconds} is "
                             f"{self.frames / self.window_seconds:g} fps, more than cache_fps={self.cache_fps:g}: "
                             "frames would repeat; raise cache_fps (a new prepare) or window_seconds")  # fmt: skip
        return self

    @property
    def stored_side(self) -> int:
        return self.cache_short_side or self.resize or self.image_size


def holdout(clip_id: str, fraction: float) -> bool:
    """Whether a train clip goes to val: a stable hash of its id, so the split survives missing files."""
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) < fraction * 2**32


class PreparedSplit:
    """One split served through a DataLoader (:class:`harness.data.loader.SplitLoader`), its views cut from a
    ``source``: the cache's shards (:class:`harness.data.shards.ShardSource`) or the media files
    (:class:`harness.data.media.MediaSource`, ``cache: none``)."""

    def __init__(self, name: str, records: list[ClipRecord], source, label_batch, params: PreparedConfig):
        self.name, self.records, self.source = name, records, source
        self.label_batch, self.params = label_batch, params
        self.views = (params.test_clips, params.test_crops) if name == "test" else (1, 1)
        self._pad = torch.tensor([round(m * 255) for m in params.pixel_mean], dtype=torch.uint8).view(3, 1, 1)
        self._loader: SplitLoader | None = None
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (mean, 1 / std)

    def __len__(self) -> int:
        return len(self.records) * self.views[0] * self.views[1]

    def on_device(self, batch: dict) -> dict:
        """uint8 video -> float: colour jitter (``colour`` factors drawn by the loader), then the card's mean/std."""
        video = batch["video"]
        if video.dtype != torch.uint8:
            return batch
        key = video.device
        if key not in self._norm:
            p = self.params
            mean = torch.tensor(p.pixel_mean, device=key).view(1, 1, 3, 1, 1)
            self._norm[key] = (mean, 1 / torch.tensor(p.pixel_std, device=key).view(1, 1, 3, 1, 1))
        mean, inv_std = self._norm[key]
        x = video.float().div_(255)  # (B, T, 3, H, W) in [0, 1]
        if "colour" in batch:
            x = colour_jitter(x, batch.pop("colour").to(x.device, x.dtype))
        return {**batch, "video": x.sub_(mean).mul_(inv_std)}

    def items(self, shuffle: bool, seed: int) -> list[tuple[int, int | None, int, int]]:
        """(record, draw seed or None for an eval view, temporal view, spatial view) of every sample of an epoch."""
        n_t, n_s = self.views
        if self.name == "train":
            return [(i, seed, 0, 0) for i in range(len(self.records))]
        return [(i, None, t, s) for i in range(len(self.records)) for t in range(n_t) for s in range(n_s)]

    def plan(self, item: tuple[int, int | None, int, int]) -> View:
        """The cut of one item (which frames, crop, flip, colour, audio window, masks), without decoding."""
        i, seed, t, s = item
        rec = self.records[i]
        seconds, n_frames, hw, _ = self.source.info(rec)
        rng = draw_rng(seed, rec.id) if seed is not None else None
        return plan_view(self.params, seconds, n_frames, hw, rng, t, self.views[0], s, self.views[1])

    def sample(self, item: tuple[int, int | None, int, int]) -> dict:
        """One sample: ``video`` uint8 (T, 3, S, S), ``audio`` (1, M, F) normalised, label payload, id, presence."""
        from torchvision.transforms.v2.functional import resize

        p, rec = self.params, self.records[item[0]]
        view = self.plan(item)
        wanted = sorted({k for k in view.frames if k >= 0})
        frames, fbank = self.source.load(rec, wanted)
        top, left, side = view.crop
        pad = self._pad.expand(3, p.image_size, p.image_size)
        at = {k: j for j, k in enumerate(wanted[: len(frames)])}  # a media file may hold fewer than its header said
        if frames:
            crops = torch.stack([x[:, top : top + side, left : left + side] for x in frames])
            if side != p.image_size:
                crops = resize(crops, [p.image_size, p.image_size], antialias=True)  # (K, 3, S, S) uint8
            if view.flip:
                crops = crops.flip(-1)
        else:  # a window with no frame of the clip in it (a segment past the video's end): all padding
            crops = pad[None]
        video = torch.stack([crops[at[k]] if k in at else pad for k in view.frames])
        if p.segment_windows:  # LAVISH's per-second windows, fixed by the clip: the stored spectrogram as it is
            logmel = normalise(fbank.float(), p)  # (M, S x F)
        else:  # the view's window, cut from the clip's whole log-mel
            a, n = view.audio
            logmel = normalise(fit_frames(fbank[:, a : a + n].float(), p.target_frames), p)  # (M, F)
        for lo, w in view.freq_masks:
            logmel[lo : lo + w] = 0.0
        for lo, w in view.time_masks:
            logmel[:, lo : lo + w] = 0.0
        return {"video": video, "audio": logmel[None], "label": rec.label, "id": rec.id,
                "audio_present": self.source.info(rec)[3], "colour": view.colour}  # fmt: skip

    def collate(self, samples: list[dict]) -> dict:
        batch = {
            "video": torch.stack([x["video"] for x in samples]),  # (B, T, 3, S, S) uint8
            "audio": torch.stack([x["audio"] for x in samples]),  # (B, 1, M, F)
            "label": self.label_batch([x["label"] for x in samples]),
            "id": [x["id"] for x in samples],
            "audio_present": torch.tensor([x["audio_present"] for x in samples], dtype=torch.bool),
            "video_present": torch.ones(len(samples), dtype=torch.bool),
        }
        if any(x["colour"] is not None for x in samples):
            batch["colour"] = torch.tensor([x["colour"] or (1.0, 1.0, 1.0, 0.0) for x in samples])  # (B, 4)
        return batch

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                shard: tuple[int, int] | None = None):  # fmt: skip
        """Yield batches in a seeded order (as :meth:`TensorSplit.batches`; ``shard=(rank, world)`` likewise: the
        rank's contiguous part of every global batch, so the ranks' parts are disjoint and together the epoch)."""
        items = self.items(shuffle, seed)
        if shuffle:
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
            items = [items[k] for k in order]
        stop = len(items) - len(items) % batch_size if drop_last and len(items) >= batch_size else len(items)
        groups = []
        for start in range(0, stop, batch_size):
            part = items[start : start + batch_size]
            if shard is not None:
                part = [part[k] for k in torch.arange(len(part)).tensor_split(shard[1])[shard[0]].tolist()]
            groups.append(part)
        if self._loader is None:
            p = self.params
            self._loader = SplitLoader(self.sample, self.collate, p.loader_workers, p.loader_prefetch, p.pin_memory)
        return self._loader(groups)

    def close(self) -> None:
        """Stop the loader's worker processes (they persist across epochs otherwise)."""
        if self._loader is not None:
            self._loader.close()


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
        records, _ = unique_clips(self.list_clips(params))  # as prepare() keeps them
        if params.cache == "none":  # served from the media files, probed once (the probes kept in a small index)
            self.manifest = self.prepare(params, cache_dir, out=io.StringIO())
            where = self.media_index(params, cache_dir)
            source = MediaSource(Path(params.root), self.settings(params), self.manifest["clips"])
        else:
            folder = self.cache_folder(params, cache_dir)
            if not (folder / "manifest.json").exists():
                self.prepare(params, cache_dir)
            self.manifest = json.loads((folder / "manifest.json").read_text())
            where, source = folder / "manifest.json", ShardSource(folder, self.manifest["clips"])
        self.decoder = self.manifest["decoder"]
        self.fingerprint = self.manifest["hash"]
        index = self.manifest["clips"]
        skip = set(self.manifest["short"]) if params.short_clips == "skip" else set()
        by_split = {s: [r for r in records if r.split == s and r.id in index and r.id not in skip] for s in SPLITS}
        by_split["train"] = [r for r in by_split["train"] if in_fraction(r.id, params.train_fraction)]
        for s, rs in by_split.items():
            if not rs:
                raise DatasetError(self._empty(s, where, len([r for r in records if r.split == s])))
        self.splits = {s: PreparedSplit(s, rs, source, self.label_batch, params) for s, rs in by_split.items()}

    def _empty(self, split: str, where: Path, listed: int) -> str:
        p, counts = self.params, self.manifest["counts"]
        why = f"the annotations list {listed} clips in it"
        if listed == 0 and split == "val":
            why = (f"no train clip hashes into val at dataset.val_fraction={p.val_fraction}; raise it (e.g. 0.1) "
                   "or give the format a val list")  # fmt: skip
        elif split == "train" and p.train_fraction < 1:
            why += f", none within dataset.train_fraction={p.train_fraction}"
        elif listed:
            why += ", none of them prepared (missing or corrupt files; check dataset.root and `harness prepare`)"
        return f"dataset {self.format}: split {split!r} is empty: {why} (manifest {where}: {counts})"

    def provenance(self) -> dict[str, str]:
        """The fingerprint, which subset (manifest hash) was decoded by what, and the manifest's counts (listed,
        found, decoded, missing, corrupt, short)."""
        counts = ", ".join(f"{k} {v}" for k, v in self.manifest["counts"].items())
        return {**super().provenance(), "harness.manifest_hash": self.manifest["hash"], "harness.decoder": self.decoder,
                "harness.data_counts": counts}  # fmt: skip

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
        return InputSpec(
            params.frames, params.image_size, params.n_mels, spectrogram_frames(params), params.num_classes
        )

    # -- shared ------------------------------------------------------------------------------------------------

    @classmethod
    def settings(cls, params: PreparedConfig) -> dict:
        """What the cache depends on: the folder's key (the decoder as resolved here: pyav or torchcodec)."""
        fe = FrontEndConfig(**{k: getattr(params, k) for k in FrontEndConfig.model_fields})
        return {"format": cls.format, "clip_seconds": params.clip_seconds, "cache_fps": params.cache_fps,
                "cache_short_side": params.stored_side, "jpeg_quality": params.jpeg_quality,
                "decoder": resolve_decoder(params.decoder), "frontend": fbank_settings(fe)}  # fmt: skip

    @classmethod
    def cache_folder(cls, params: PreparedConfig, cache_dir: str | os.PathLike) -> Path:
        if params.cache:
            base = Path(params.cache)
        else:
            tag = hashlib.sha1(str(Path(params.root).resolve()).encode()).hexdigest()[:8]
            base = Path(cache_dir) / "prepared" / f"{cls.format}-{tag}"
        return base / settings_hash(cls.settings(params))

    @classmethod
    def media_index(cls, params: PreparedConfig, cache_dir: str | os.PathLike) -> Path:
        """Where ``cache: none`` keeps its probes of the media files (:mod:`harness.data.media`)."""
        tag = hashlib.sha1(str(Path(params.root).resolve()).encode()).hexdigest()[:8]
        return Path(cache_dir) / "media-index" / f"{cls.format}-{tag}" / f"{settings_hash(cls.settings(params))}.json"

    @staticmethod
    def raw_bytes(params: PreparedConfig) -> int:
        """Bytes per clip of the cache before issue 13 (uint8 centre crops of test_clips fixed views + their
        fbanks), for comparison."""
        v = params.test_clips
        return v * params.frames * 3 * params.image_size**2 + v * params.n_mels * params.target_frames * 2 + 1

    @classmethod
    def prepare(cls, params: PreparedConfig, cache_dir: str | os.PathLike, workers: int = 0, strict: bool = False,
                out=None, dry_run: bool = False) -> dict:  # fmt: skip
        """Print the cache's bytes per clip and projected size, then (unless ``dry_run``) decode the listed clips
        into the cache (resuming), write manifest.json and return it; ``dry_run`` returns the estimate."""
        import sys

        out = out or sys.stdout
        records = cls.list_clips(params)
        if params.cache == "none":
            index = cls.media_index(params, cache_dir)
            print(f"cache: none: clips are decoded from the media files when batches are made; probing them "
                  f"into {index}", file=out)  # fmt: skip
            if dry_run:
                return {"listed": len(records)}
            return media_manifest(records, Path(params.root), index, cls.settings(params), strict, out, workers or None)
        folder = cls.cache_folder(params, cache_dir)
        est = estimate(records, Path(params.root), cls.settings(params))
        raw, per = cls.raw_bytes(params), est["bytes_per_clip"]
        est.update(listed=len(records), projected_bytes=per * len(records), raw_bytes_per_clip=raw)
        if est["clips"]:
            print(f"cache: {per / 1e6:.3f} MB per clip (measured on {est['clips']} clips, "
                  f"{est['seconds_per_clip']:.2f} s each to prepare here); {len(records)} listed clips -> "
                  f"{per * len(records) / 1e9:.2f} GB; the raw uint8 views of the old format: {raw / 1e6:.2f} MB per "
                  f"clip ({raw / per:.1f}x)", file=out)  # fmt: skip
        else:
            print(f"cache: no listed file found under {params.root} to measure", file=out)
        if dry_run:
            return est
        return prepare(records, Path(params.root), folder, cls.settings(params), workers, strict, out)
