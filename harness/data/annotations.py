"""Parsers of the papers' annotation files, exactly as the datasets ship them (``datasets/README.md`` names the source
of each).

Each returns plain Python (class lists, rows as dicts) with no media access; the format loaders in
:mod:`harness.data.formats` turn rows into :class:`ClipRecord`s. Tests run them on the real files in
``tests/fixtures/annotations``. Errors name the file and the line and say what to do; a time must be a finite
number of seconds in [0, :data:`MAX_SECONDS`], a class index a non-negative integer. A clip listed twice is kept
once (:func:`unique_clips`; the prepared cache's manifest names the dropped rows).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from harness.api.data import DatasetError

MAX_SECONDS = 1.0e6  # no clip starts 11 days into a video: a larger time is a broken row


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


def _numbered(path: Path, skip_header: bool = False, **kw) -> list[tuple[int, list[str]]]:
    """(line number, row) of a CSV file's rows; empty rows and ``#`` comments left out."""
    out = []
    with _open(path) as f:
        reader = csv.reader(f, **kw)
        try:
            for r in reader:
                if r and not r[0].startswith("#"):
                    out.append((reader.line_num, r))
        except (csv.Error, UnicodeDecodeError) as e:
            raise AnnotationError(f"{path}:{reader.line_num + 1}: unreadable CSV ({e}); fix or delete that line") from e
    return out[1:] if skip_header else out


def _rows(path: Path, skip_header: bool = False, **kw) -> list[list[str]]:
    return [r for _, r in _numbered(path, skip_header, **kw)]


def seconds(text: str, where: str, what: str = "time") -> float:
    """A time in seconds of an annotation row; ``where`` is ``file:line``. Raises :class:`AnnotationError`."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {what} {text!r} is not a number of seconds; fix or delete that row") from None
    if not math.isfinite(x) or not 0 <= x <= MAX_SECONDS:
        raise AnnotationError(f"{where}: {what} {text!r} is not a time within [0, {MAX_SECONDS:g}] seconds; fix or "
                              "delete that row")  # fmt: skip
    return x


def index(text: str, where: str, what: str = "class index") -> int:
    """A non-negative integer (class index, id column) of an annotation row. Raises :class:`AnnotationError`."""
    text = str(text).strip()
    if not text.isdigit() or len(text) > 9:
        raise AnnotationError(f"{where}: {what} {text!r} is not a non-negative integer; fix or delete that row")
    return int(text)


def unique_clips(records: list[ClipRecord]) -> tuple[list[ClipRecord], list[str]]:
    """``records`` with each clip id once (the first row wins), and the ids of the rows dropped: a row listed twice
    would put its clip in a split twice."""
    seen: set[str] = set()
    out, dropped = [], []
    for r in records:
        if r.id in seen:
            dropped.append(r.id)
            continue
        seen.add(r.id)
        out.append(r)
    return out, dropped


# --- VGGSound: vggsound.csv (ytid, start, label, split), stat.csv (class, count, category), test.csv ---------------


def vggsound_classes(stat_csv: Path) -> list[str]:
    """Class names of ``stat.csv``, sorted alphabetically (the official loader's label indices)."""
    return sorted(r[0] for r in _rows(stat_csv))


def vggsound_rows(csv_path: Path) -> list[tuple[str, int, str, str]]:
    """``vggsound.csv`` rows (no header): (YouTube id, start seconds, label, split in {train, test})."""
    out = []
    for i, r in _numbered(csv_path):
        if len(r) != 4 or r[3].strip() not in ("train", "test"):
            raise AnnotationError(f"{csv_path}:{i}: expected 'ytid,start,label,train|test', got {r!r}")
        out.append((r[0].strip(), int(seconds(r[1], f"{csv_path}:{i}", "start")), r[2].strip(), r[3].strip()))
    return out


def vggsound_test_list(test_csv: Path) -> list[tuple[str, int, str]]:
    """The official ``test.csv``: ``<ytid>_<start:06d>.mp4,<label>`` -> (ytid, start, label)."""
    out = []
    for i, r in _numbered(test_csv):
        stem = r[0].removesuffix(".mp4")
        ytid, sep, start = stem.rpartition("_")
        if not sep or not start.isdigit() or len(r) != 2:
            raise AnnotationError(f"{test_csv}:{i}: expected '<ytid>_<start:06d>.mp4,<label>', got {r!r}")
        out.append((ytid, int(seconds(start, f"{test_csv}:{i}", "start")), r[1].strip()))
    return out


# --- AudioSet: segment CSVs with '#' comment lines and quoted MID lists; class_labels_indices.csv -----------------


def audioset_classes(indices_csv: Path) -> list[tuple[str, str]]:
    """``class_labels_indices.csv`` (``index,mid,display_name``) -> [(mid, display name)] in index order."""
    rows = _numbered(indices_csv, skip_header=True)
    for i, (line, r) in enumerate(rows):
        if len(r) < 3:
            raise AnnotationError(f"{indices_csv}:{line}: expected 'index,mid,display_name', got {r!r}")
        if index(r[0], f"{indices_csv}:{line}", "index") != i:
            raise AnnotationError(f"{indices_csv}:{line}: index {r[0]} out of order (expected {i})")
    return [(r[1], r[2]) for _, r in rows]


def audioset_segments(segments_csv: Path) -> list[tuple[str, float, float, list[str]]]:
    """A segment CSV -> [(YTID, start_seconds, end_seconds, [label MIDs])]; ``#`` lines are comments."""
    out = []
    for i, r in _numbered(segments_csv, skipinitialspace=True):
        where = f"{segments_csv}:{i}"
        if len(r) != 4:
            raise AnnotationError(f"{where}: expected 'YTID, start, end, \"mid,...\"', got {r!r}")
        start, end = seconds(r[1], where, "start"), seconds(r[2], where, "end")
        out.append((r[0], start, end, [m for m in r[3].split(",") if m]))
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
            where = f"{path}:{i}"
            start, end = (int(seconds(parts[k], where, what)) for k, what in ((3, "start"), (4, "end")))
            out.append((parts[0], parts[1], start, end))
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
    rows = _numbered(classes_csv, skip_header=True)
    for i, (line, r) in enumerate(rows):
        if len(r) < 2:
            raise AnnotationError(f"{classes_csv}:{line}: expected 'id,key,...', got {r!r}")
        if index(r[0], f"{classes_csv}:{line}", "id") != i:
            raise AnnotationError(f"{classes_csv}:{line}: id {r[0]} out of order (expected {i})")
    return [r[1] for _, r in rows]


def _seconds(ts: str, where: str = "") -> float:
    """``HH:MM:SS.ff`` -> seconds."""
    parts = str(ts).split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts[:2]):
        raise AnnotationError(f"{where}: timestamp {ts!r} is not HH:MM:SS.ff; fix or delete that row")
    return seconds(str(int(parts[0]) * 3600 + int(parts[1]) * 60 + seconds(parts[2], where, "timestamp")), where)


def epic_segments(csv_path: Path) -> list[dict]:
    """An action-segment CSV -> [{narration_id, participant_id, video_id, start, stop, verb_class, noun_class}]."""
    with _open(csv_path) as f:
        reader = csv.DictReader(f)
        need = {"narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp"}
        if not need <= set(reader.fieldnames or ()):
            raise AnnotationError(f"{csv_path}: needs columns {sorted(need)}, has {reader.fieldnames}")
        out = []
        for r in reader:
            where = f"{csv_path}:{reader.line_num}"
            out.append(
                {
                    "narration_id": r["narration_id"],
                    "participant_id": r["participant_id"],
                    "video_id": r["video_id"],
                    "start": _seconds(r["start_timestamp"], where),
                    "stop": _seconds(r["stop_timestamp"], where),
                    # test CSV: no labels
                    "verb_class": index(r["verb_class"], where, "verb_class") if r.get("verb_class") else -1,
                    "noun_class": index(r["noun_class"], where, "noun_class") if r.get("noun_class") else -1,
                }
            )
    return out
