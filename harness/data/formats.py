"""One loader class per annotation format (registered in ``FORMATS``): VGGSound, AudioSet, AVE, class folders, EPIC.

Each turns its dataset's annotation files (``datasets/README.md``) into :class:`ClipRecord`s with the label payload of
its default task, and batches those payloads:

| format | label | batch ``label`` |
| --- | --- | --- |
| ``vggsound_csv`` | class index (stat.csv sorted alphabetically) | int64 (B,) |
| ``audioset_csv`` | indices of the positive MIDs (class_labels_indices.csv order) | float multi-hot (B, C) |
| ``ave`` | per-second class, background = C - 1 (classes in order of first appearance) | int64 (B, S = 10) |
| ``class_folders`` | index of the sorted class folder | int64 (B,) |
| ``epic_csv`` | (verb_class, noun_class) | {"verb": int64 (B,), "noun": int64 (B,)}; spec classes 97 + 300 |

A new dataset in one of these formats is a card; a new format is a class here and a line in the registry.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from harness.api import InputSpec
from harness.data import annotations as A
from harness.data.annotations import AnnotationError, ClipRecord
from harness.data.dataset import PreparedConfig, PreparedDataset, holdout
from harness.data.frontend import spectrogram_frames


def _path(params: PreparedConfig, name: str) -> Path:
    return Path(params.root) / name


def _check_classes(fmt: str, n: int, params: PreparedConfig, source: str) -> None:
    if n != params.num_classes:
        raise AnnotationError(f"{fmt}: {source} lists {n} classes, but dataset.num_classes = {params.num_classes}; "
                              f"set dataset.num_classes={n} if this class list is the one you mean")  # fmt: skip


# --- VGGSound -------------------------------------------------------------------------------------------------------


class VGGSoundConfig(PreparedConfig):
    annotations: str = Field("vggsound.csv", description="CSV without header: ytid,start,label,split (under root)")
    classes_file: str = Field("stat.csv", description="class list (class,count,category); sorted alphabetically")
    test_list: str | None = Field(None, description="optional official test.csv; when set it defines the test split")
    video_path: str = Field("video/{ytid}_{start:06d}.mp4", description="media file of a clip, relative to root")
    trimmed: bool = Field(True, description="files hold only the 10-s clip (window starts at 0), not the whole video")


class VGGSoundDataset(PreparedDataset):
    """VGGSound: ``vggsound.csv`` rows -> single-label clips; val = a stable ``val_fraction`` of train."""

    Config = VGGSoundConfig
    format = "vggsound_csv"

    @classmethod
    def list_clips(cls, params: VGGSoundConfig) -> list[ClipRecord]:
        classes = A.vggsound_classes(_path(params, params.classes_file))
        _check_classes(cls.format, len(classes), params, params.classes_file)
        lookup = {c: i for i, c in enumerate(classes)}
        rows = A.vggsound_rows(_path(params, params.annotations))
        if params.test_list:
            rows = [r for r in rows if r[3] == "train"]
            rows += [(y, s, lab, "test") for y, s, lab in A.vggsound_test_list(_path(params, params.test_list))]
        out = []
        for ytid, start, label, split in rows:
            if label not in lookup:
                raise AnnotationError(
                    f"{params.annotations}: label {label!r} of {ytid} is not in {params.classes_file}"
                )
            cid = f"{ytid}_{start:06d}"
            if split == "train" and holdout(cid, params.val_fraction):
                split = "val"
            t0 = 0.0 if params.trimmed else float(start)
            out.append(ClipRecord(cid, params.video_path.format(ytid=ytid, start=start), split, t0,
                                  t0 + params.clip_seconds, lookup[label]))  # fmt: skip
        return out


# --- AudioSet -------------------------------------------------------------------------------------------------------


class AudioSetConfig(PreparedConfig):
    train_csv: str = Field("balanced_train_segments.csv", description="segment CSV of the train split (AS-mini)")
    test_csv: str = Field("eval_segments.csv", description="segment CSV of the test split")
    classes_file: str = Field("class_labels_indices.csv", description="index,mid,display_name (527 rows)")
    video_path: str = Field("{subset}/{ytid}.mp4", description="media file; {subset} = the CSV's stem")
    trimmed: bool = Field(True, description="files hold only the segment (window starts at 0)")


class AudioSetDataset(PreparedDataset):
    """AudioSet: segment CSVs -> multi-label clips (multi-hot over class_labels_indices.csv)."""

    Config = AudioSetConfig
    format = "audioset_csv"

    @classmethod
    def list_clips(cls, params: AudioSetConfig) -> list[ClipRecord]:
        classes = A.audioset_classes(_path(params, params.classes_file))
        _check_classes(cls.format, len(classes), params, params.classes_file)
        lookup = {mid: i for i, (mid, _) in enumerate(classes)}
        out = []
        for csv_name, split in ((params.train_csv, "train"), (params.test_csv, "test")):
            subset = Path(csv_name).stem
            for ytid, start, end, mids in A.audioset_segments(_path(params, csv_name)):
                unknown = [m for m in mids if m not in lookup]
                if unknown:
                    raise AnnotationError(f"{csv_name}: {ytid} has MIDs {unknown} not in {params.classes_file}")
                s = split if split == "test" or not holdout(ytid, params.val_fraction) else "val"
                t0 = 0.0 if params.trimmed else start
                dur = min(end - start, params.clip_seconds)
                path = params.video_path.format(subset=subset, ytid=ytid, start=int(start), end=int(end))
                out.append(ClipRecord(ytid, path, s, t0, t0 + dur, [lookup[m] for m in mids]))
        return out

    def label_batch(self, labels: list) -> torch.Tensor:
        y = torch.zeros(len(labels), self.params.num_classes)
        for i, idx in enumerate(labels):
            y[i, idx] = 1.0
        return y  # (B, C) multi-hot


# --- AVE ------------------------------------------------------------------------------------------------------------


class AVEConfig(PreparedConfig):
    annotations: str = Field("Annotations.txt", description="Category&YouTubeID&Quality&StartTime&EndTime rows")
    orders: dict[str, str] = Field(
        {"train": "train_order.h5", "val": "val_order.h5", "test": "test_order.h5"},
        description="split -> HDF5 file with dataset 'order' (0-based rows of the annotations)",
    )
    video_path: str = Field("AVE/{ytid}.mp4", description="media file of a video, relative to root")
    classes: list[str] | None = Field(
        None, description="pinned class list (index order); null = order of first appearance in the annotations"
    )
    segments: int = Field(10, ge=1, description="one-second segments labelled per video (S)")
    labels: Literal["per_second", "clip"] = Field(
        "per_second", description="per_second: (S,) classes with background = C - 1; clip: the event's class"
    )


class AVEDataset(PreparedDataset):
    """AVE: 28 events + background; per-second labels over [start, end), classes in order of first appearance."""

    Config = AVEConfig
    format = "ave"

    @classmethod
    def input_spec(cls, params: AVEConfig) -> InputSpec:
        per_second = params.labels == "per_second"
        return InputSpec(params.frames, params.image_size, params.n_mels, spectrogram_frames(params),
                         params.num_classes + per_second, segments=params.segments if per_second else 0)  # fmt: skip

    @classmethod
    def list_clips(cls, params: AVEConfig) -> list[ClipRecord]:
        rows = A.ave_annotations(_path(params, params.annotations))
        classes = params.classes or A.ave_classes(rows)
        _check_classes(cls.format, len(classes), params, "dataset.classes" if params.classes else params.annotations)
        unknown = sorted({r[0] for r in rows} - set(classes))
        if unknown:
            raise AnnotationError(f"{params.annotations}: categories {unknown} are not in dataset.classes")
        lookup, bg = {c: i for i, c in enumerate(classes)}, len(classes)
        split_of = {}
        for split, name in params.orders.items():
            for i in A.ave_order(_path(params, name)):
                if i >= len(rows) or i in split_of:
                    why = "beyond the annotations" if i >= len(rows) else f"also in {split_of[i]}"
                    raise AnnotationError(f"{name}: row {i} is {why}")
                split_of[i] = split
        out = []
        for i, (cat, ytid, start, end) in enumerate(rows):
            if i not in split_of:
                continue
            if params.labels == "clip":
                label = lookup[cat]
            else:
                label = [lookup[cat] if start <= s < end else bg for s in range(params.segments)]
            out.append(ClipRecord(f"{ytid}_{i}", params.video_path.format(ytid=ytid), split_of[i], 0.0,
                                  params.clip_seconds, label))  # fmt: skip
        return out


# --- class folders (Kinetics-Sounds) --------------------------------------------------------------------------------


class ClassFoldersConfig(PreparedConfig):
    split_dirs: dict[str, str] = Field({"train": "train", "val": "val", "test": "test"},
                                       description="split -> folder of class sub-folders (under root)")  # fmt: skip
    classes: list[str] | None = Field(None, description="pinned class list; null = sorted folder names of train")
    extensions: tuple[str, ...] = Field((".mp4", ".mkv", ".webm", ".avi"), description="media file suffixes")


class ClassFoldersDataset(PreparedDataset):
    """``<split>/<class>/<clip>.mp4``: label = index of the class folder among the sorted (or pinned) names."""

    Config = ClassFoldersConfig
    format = "class_folders"

    @classmethod
    def list_clips(cls, params: ClassFoldersConfig) -> list[ClipRecord]:
        train = _path(params, params.split_dirs["train"])
        if not train.is_dir():
            raise AnnotationError(f"class folder {train} does not exist; see datasets/README.md")
        classes = params.classes or sorted(d.name for d in train.iterdir() if d.is_dir())
        _check_classes(cls.format, len(classes), params, f"{train} (class folders)")
        lookup = {c: i for i, c in enumerate(classes)}
        out, unknown = [], {}
        for split, folder in params.split_dirs.items():
            for f in sorted(_path(params, folder).glob("*/*")):
                if f.name.startswith("._") or f.suffix.lower() not in params.extensions:
                    continue  # macOS AppleDouble sidecars (._clip.mp4) are metadata, not media
                if f.parent.name not in lookup:
                    unknown.setdefault(f"{split}/{f.parent.name}", 0)
                    unknown[f"{split}/{f.parent.name}"] += 1
                    continue
                rel = f.relative_to(params.root).as_posix()
                out.append(ClipRecord(rel.rsplit(".", 1)[0], rel, split, 0.0, params.clip_seconds,
                                      lookup[f.parent.name]))  # fmt: skip
        if unknown:
            n, where = sum(unknown.values()), ", ".join(f"{k} ({v})" for k, v in sorted(unknown.items()))
            warnings.warn(f"{cls.format}: {n} clips left out: their class folders are not among the "
                          f"{len(classes)} classes of {train if not params.classes else 'dataset.classes'}: {where}",
                          stacklevel=2)  # fmt: skip
        return out


# --- EPIC-KITCHENS-100 ----------------------------------------------------------------------------------------------


class EpicConfig(PreparedConfig):
    train_csv: str = Field("EPIC_100_train.csv", description="action segments of train")
    test_csv: str = Field("EPIC_100_validation.csv", description="labelled segments used as test (test labels hidden)")
    verb_classes: str = Field("EPIC_100_verb_classes.csv", description="id,key,instances,category (97 rows)")
    noun_classes: str = Field("EPIC_100_noun_classes.csv", description="id,key,instances,category (300 rows)")
    num_nouns: int = Field(300, ge=1, description="noun classes (num_classes counts the verbs)")
    video_path: str = Field("{participant_id}/videos/{video_id}.MP4", description="video of a segment")


class EpicDataset(PreparedDataset):
    """EPIC-KITCHENS-100 action segments: verb and noun labels (multihead); a segment's window is its timestamps."""

    Config = EpicConfig
    format = "epic_csv"

    @classmethod
    def input_spec(cls, params: EpicConfig) -> InputSpec:
        heads = (("verb", params.num_classes), ("noun", params.num_nouns))
        return InputSpec(params.frames, params.image_size, params.n_mels, spectrogram_frames(params),
                         params.num_classes + params.num_nouns, heads=heads)  # fmt: skip

    @classmethod
    def list_clips(cls, params: EpicConfig) -> list[ClipRecord]:
        _check_classes(cls.format, len(A.epic_classes(_path(params, params.verb_classes))), params, params.verb_classes)
        nouns = len(A.epic_classes(_path(params, params.noun_classes)))
        if nouns != params.num_nouns:
            raise AnnotationError(f"{params.noun_classes} lists {nouns} nouns, dataset.num_nouns = {params.num_nouns}")
        out = []
        for csv_name, split in ((params.train_csv, "train"), (params.test_csv, "test")):
            for r in A.epic_segments(_path(params, csv_name)):
                if r["verb_class"] < 0:
                    raise AnnotationError(f"{csv_name}: segment {r['narration_id']} has no verb_class/noun_class")
                s = split if split == "test" or not holdout(r["narration_id"], params.val_fraction) else "val"
                path = params.video_path.format(**r)
                out.append(ClipRecord(r["narration_id"], path, s, r["start"], r["stop"],
                                      (r["verb_class"], r["noun_class"])))  # fmt: skip
        return out

    @staticmethod
    def label_batch(labels: list) -> dict[str, torch.Tensor]:
        y = torch.tensor(labels, dtype=torch.int64)  # (B, 2)
        return {"verb": y[:, 0], "noun": y[:, 1]}
