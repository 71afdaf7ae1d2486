"""Clips read straight from the media files (``dataset.cache: none``): the same views as the prepared cache, no copy.

For users who would rather not store a copy of the dataset: every sample decodes the frames of its view (on the
``cache_fps`` grid, at the stored short side, as ``harness prepare`` would have stored them) and the audio of its
clip in the loader's workers, then the recipe cuts it exactly as it cuts the cache (:mod:`harness.data.recipe`: the
same draws, so the same windows, crops and masks; the frames differ from the cache's by the cache's JPEG only, and
the log-mel by its float16). A sample costs a decode of its file up to the view's last frame (``bench/cache.py``
and ``bench/loader.py`` measure it against the cache).

What the recipe needs before decoding (the media seconds of a clip, its grid frames, the stored frame size, whether
there is audio) is probed once per clip: the first grid frame is decoded (its size and rotation) and the container's
header says where the video ends; a clip whose header ends within 0.1 s of its last grid frame (or says nothing) is
decoded whole, so short clips get the seconds the cache would record. The probes are kept in
``<cache_dir>/media-index/<format>-<root hash>/<settings hash>.json`` (per clip, keyed by its file's size and mtime;
a few hundred bytes a clip, no media), so later runs do not probe again; ``harness prepare ... --set cache=none``
probes without training. Missing, corrupt (a file that does not open, or no video frame at the clip's start) and
short clips are counted and listed as by ``harness prepare``. A file that breaks after its first frame, or whose
header claims more than it holds, is only found when a sample decodes it: frames it lacks are filled as
``short_clips: pad`` fills them; ``harness prepare`` finds such files up front.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from harness.data.annotations import ClipRecord
from harness.data.decode import TIE, CorruptMediaError, decode, decoder_name
from harness.data.frontend import FrontEndConfig, audio_features
from harness.data.prepare import PrepareError, clip_info, grid, listed_files
from harness.data.shards import settings_hash

MARGIN = 0.1  # seconds of header duration past the last grid frame that count as "not short" without decoding


def header_end(path: str) -> float | None:
    """Where the container's header says the video stream ends (s), or None when it does not say."""
    import av

    with av.open(path) as c:
        if not c.streams.video:
            return None
        vs = c.streams.video[0]
        if vs.duration is not None and vs.time_base is not None:
            return float(((vs.start_time or 0) + vs.duration) * vs.time_base)
        return c.duration / 1e6 if c.duration else None


def probe(path: str, start: float, stop: float, s: dict) -> dict:
    """The clip's info as the cache records it (``seconds``, ``short``, ``hw``) plus ``frames`` (grid frames held)
    and ``audio_present``.

    Raises:
        CorruptMediaError: the file does not open or has no video frame at the clip's start.
    """
    fe = FrontEndConfig(**s["frontend"])
    times = [start + t for t in grid(stop - start, s["cache_fps"])]
    try:
        end = header_end(path)
    except Exception as e:  # av.error.* on a file that is not media
        raise CorruptMediaError(f"{path}: cannot open: {e}") from e
    whole = end is None or end <= times[-1] + TIE + MARGIN
    first = times if whole else times[:1]
    d = decode(path, first, start, stop if whole else start + 1 / s["cache_fps"], fe.sample_rate,
               s["cache_short_side"], s["decoder"], threads=1)  # fmt: skip
    info = clip_info(path, d, start, stop)
    info.pop("audio_seconds", None)  # known from a whole decode only
    return {**info, "frames": d.video.shape[0] if whole else len(times), "audio_present": d.audio is not None}


def _index_key(r: ClipRecord) -> str:
    return f"{r.file}|{r.start:.4f}|{r.stop:.4f}"


def media_manifest(records: list[ClipRecord], root: Path, index_file: Path, settings: dict, strict: bool = False,
                   out=sys.stdout, threads: int | None = None) -> dict:  # fmt: skip
    """Probe every listed clip not yet in ``index_file`` (in ``threads`` threads); the manifest of the clips that
    can be served (the shape of ``harness prepare``'s, ``clips`` holding each clip's probe).

    Raises:
        PrepareError: ``strict`` and a file is corrupt.
    """
    table = json.loads(index_file.read_text()) if index_file.exists() else {}
    found, missing, hints = listed_files(records, root)
    todo, stats = [], {}
    for r in found:
        st = (root / r.file).stat()
        stats[r.id] = [st.st_size, st.st_mtime_ns]
        hit = table.get(_index_key(r))
        if not (hit and hit[:2] == stats[r.id]):
            todo.append(r)

    def one(r: ClipRecord) -> list:
        try:
            return [*stats[r.id], probe(str(root / r.file), r.start, r.stop, settings)]
        except CorruptMediaError as e:
            return [*stats[r.id], {"error": str(e)}]

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:  # FFmpeg works without the GIL
        for r, row in zip(todo, pool.map(one, todo)):
            table[_index_key(r)] = row
    index_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, index_file)
    clips, corrupt, errors = {}, [], {}
    for r in records:
        if r.id in stats:
            info = table[_index_key(r)][2]
            if "error" in info:
                if strict:
                    raise PrepareError(f"corrupt media file {root / r.file} (clip {r.id}): {info['error']}")
                corrupt.append(r.id), errors.__setitem__(r.id, info["error"])
            else:
                clips[r.id] = info
    short = {k: v["seconds"] for k, v in clips.items() if v["short"]}
    counts = {"listed": len(records), "found": len(records) - len(missing), "decoded": len(clips),
              "missing": len(missing), "corrupt": len(corrupt), "short": len(short)}  # fmt: skip
    blob = json.dumps([settings_hash(settings), "media", sorted((k, stats[k]) for k in clips)]).encode()
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + " (probed, served from the media files)", file=out)
    return {"counts": counts, "missing": missing, "missing_hints": hints, "corrupt": sorted(corrupt),
            "errors": errors, "short": short, "decoder": decoder_name(settings["decoder"]), "settings": settings,
            "root": str(root), "clips": clips, "hash": hashlib.sha256(blob).hexdigest()[:16]}  # fmt: skip


class MediaSource:
    """A split's clips decoded from the media files when a sample is made (the cache's :class:`ShardSource` twin).

    Args:
        root: the dataset root.
        settings: the prepare settings (grid, stored side, decoder, log-mel keys).
        clips: id -> probe (:func:`probe`).
    """

    def __init__(self, root: Path, settings: dict, clips: dict[str, dict]):
        self.root, self.settings, self.clips = root, settings, clips
        self.fe = FrontEndConfig(**settings["frontend"])

    def info(self, rec: ClipRecord) -> tuple[float, int, tuple[int, int], bool]:
        """(media seconds, grid frames held, stored frame size, audio present) of a clip."""
        c = self.clips[rec.id]
        return c["seconds"], c["frames"], tuple(c["hw"]), c["audio_present"]

    def load(self, rec: ClipRecord, frames: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The grid frames ``frames`` (ascending; fewer where the file ends before its header said) as (3, h, w)
        uint8 and the log-mel (n_mels, columns) of the clip's whole audio."""
        s, fps = self.settings, self.settings["cache_fps"]
        times = [rec.start + (k + 0.5) / fps for k in frames]
        d = decode(str(self.root / rec.file), times, rec.start, rec.stop, self.fe.sample_rate, s["cache_short_side"],
                   s["decoder"], threads=1)  # fmt: skip
        wave = d.audio if d.audio is not None else torch.zeros(round((rec.stop - rec.start) * self.fe.sample_rate))
        return list(d.video), audio_features(wave, self.fe)
