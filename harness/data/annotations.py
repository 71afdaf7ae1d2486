"""Parsers of the papers' annotation files, exactly as the datasets ship them (``datasets/README.md`` names the source
of each).

Each returns plain Python (class lists, rows as dicts) with no media access; the format loaders in
:mod:`harness.data.formats` turn rows into :class:`ClipRecord`s. Tests run them on the real files in
``tests/fixtures/annotations``. Errors name the file and the line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from harness.api.data import DatasetError


class AnnotationError(DatasetError):
    """An annotation file that is missing or does not have the expected format."""


@dataclass
class ClipRecord:
    """One clip (or segment) listed by a dataset's annotations.

    Attributes:
        id: unique clip id (``<ytid>_<start:06d>`` for VGGSound, the narration id for EPIC, ...).
        file: media path relative to the dataset root.
        split: ``train``, ``val`` or ``test``.
        start: window start in seconds within the file.
        stop: window end in seconds.
        label: the format's label payload (class index, list of indices, per-second indices, verb/noun pair).
    """

    id: str
    file: str
    split: str
    start: float
    stop: float
    label: object = field(default=None)


def _open(path: Path):
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; see datasets/README.md for where to get it")
    return path.open(newline="", encoding="utf-8")


def _rows(path: Path, skip_header: bool = False, **kw) -> list[list[str]]:
    with _open(path) as f:
        rows = [r for r in csv.reader(f, **kw) if r and not r[0].startswith("#")]
    return rows[1:] if skip_header else rows


# --- VGGSound: vggsound.csv (ytid, start, label, split), stat.csv (class, count, category), test.csv ---------------


def vggsound_classes(stat_csv: Path) -> list[str]:
    """Class names of ``stat.csv``, sorted alphabetically (the official loader's label indices)."""
    return sorted(r[0] for r in _rows(stat_csv))


def vggsound_rows(csv_path: Path) -> list[tuple[str, int, str, str]]:
    """``vggsound.csv`` rows (no header): (YouTube id, start seconds, label, split in {train, test})."""
    out = []
    for i, r in enumerate(_rows(csv_path), 1):
        if len(r) != 4 or r[3].strip() not in ("train", "test"):
            raise AnnotationError(f"{csv_path}:{i}: expected 'ytid,start,label,train|test', got {r!r}")
        out.append((r[0].strip(), int(float(r[1])), r[2].strip(), r[3].strip()))
    return out


def vggsound_test_list(test_csv: Path) -> list[tuple[str, int, str]]:
    """The official ``test.csv``: ``<ytid>_<start:06d>.mp4,<label>`` -> (ytid, start, label)."""
    out = []
    for i, r in enumerate(_rows(test_csv), 1):
        stem = r[0].removesuffix(".mp4")
        ytid, sep, start = stem.rpartition("_")
        if not sep or not start.isdigit() or len(r) != 2:
            raise AnnotationError(f"{test_csv}:{i}: expected '<ytid>_<start:06d>.mp4,<label>', got {r!r}")
        out.append((ytid, int(start), r[1].strip()))
    return out


# --- AudioSet: segment CSVs with '#' comment lines and quoted MID lists; class_labels_indices.csv -----------------


def audioset_classes(indices_csv: Path) -> list[tuple[str, str]]:
    """``class_labels_indices.csv`` (``index,mid,display_name``) -> [(mid, display name)] in index order."""
    rows = _rows(indices_csv, skip_header=True)
    for i, r in enumerate(rows):
        if int(r[0]) != i:
            raise AnnotationError(f"{indices_csv}:{i + 2}: index {r[0]} out of order (expected {i})")
    return [(r[1], r[2]) for r in rows]


def audioset_segments(segments_csv: Path) -> list[tuple[str, float, float, list[str]]]:
    """A segment CSV -> [(YTID, start_seconds, end_seconds, [label MIDs])]; ``#`` lines are comments."""
    out = []
    for i, r in enumerate(_rows(segments_csv, skipinitialspace=True), 1):
        if len(r) != 4:
            raise AnnotationError(f"{segments_csv}: row {i}: expected 'YTID, start, end, \"mid,...\"', got {r!r}")
        out.append((r[0], float(r[1]), float(r[2]), [m for m in r[3].split(",") if m]))
    return out


# --- AVE: Annotations.txt (Category&YouTubeID&Quality&StartTime&EndTime), {train,val,test}_order.h5 ---------------


def ave_annotations(path: Path) -> list[tuple[str, str, int, int]]:
    """``Annotations.txt`` -> [(category, ytid, start, end)]; the event covers seconds [start, end)."""
    out = []
    with _open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("&")
            if len(parts) != 5:
                raise AnnotationError(f"{path}:{i}: expected 'Category&YouTubeID&Quality&Start&End', got {line!r}")
            if i == 1 and parts[3] == "StartTime":  # the LAVISH copy has a header line
                continue
            out.append((parts[0], parts[1], int(parts[3]), int(parts[4])))
    return out


def ave_classes(rows: list[tuple[str, str, int, int]]) -> list[str]:
    """Event classes in order of first appearance in ``Annotations.txt`` (the official indices); not sorted."""
    return list(dict.fromkeys(r[0] for r in rows))


def ave_order(h5_path: Path) -> list[int]:
    """0-based row indices into ``Annotations.txt`` of one split (HDF5 dataset ``order``)."""
    import h5py

    if not h5_path.is_file():
        raise AnnotationError(f"split file {h5_path} does not exist")
    with h5py.File(h5_path, "r") as f:
        return [int(i) for i in f["order"][()].reshape(-1)]


# --- EPIC-KITCHENS-100: action-segment CSVs, EPIC_100_{verb,noun}_classes.csv ---------------------------------------


def epic_classes(classes_csv: Path) -> list[str]:
    """``EPIC_100_verb_classes.csv`` / ``..._noun_classes.csv`` (``id,key,instances,category``) -> keys by id."""
    rows = _rows(classes_csv, skip_header=True)
    for i, r in enumerate(rows):
        if int(r[0]) != i:
            raise AnnotationError(f"{classes_csv}: id {r[0]} out of order (expected {i})")
    return [r[1] for r in rows]


def _seconds(ts: str) -> float:
    h, m, s = ts.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def epic_segments(csv_path: Path) -> list[dict]:
    """An action-segment CSV -> [{narration_id, participant_id, video_id, start, stop, verb_class, noun_class}]."""
    with _open(csv_path) as f:
        reader = csv.DictReader(f)
        need = {"narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp"}
        if not need <= set(reader.fieldnames or ()):
            raise AnnotationError(f"{csv_path}: needs columns {sorted(need)}, has {reader.fieldnames}")
        out = []
        for r in reader:
            out.append(
                {
                    "narration_id": r["narration_id"],
                    "participant_id": r["participant_id"],
                    "video_id": r["video_id"],
                    "start": _seconds(r["start_timestamp"]),
                    "stop": _seconds(r["stop_timestamp"]),
                    "verb_class": int(r["verb_class"]) if r.get("verb_class") else -1,  # test CSV: no labels
                    "noun_class": int(r["noun_class"]) if r.get("noun_class") else -1,
                }
            )
    return out
