"""Decode a dataset once into a sharded cache: ``harness prepare DATASET --root DIR``.

The cache of one dataset and one set of decoding settings is a folder ``<cache>/<settings hash>/``:

    shard-00000.safetensors   every frame of each clip on the cache_fps grid as JPEG (short side cache_short_side,
                              the aspect kept, the file's rotation applied), the log-mel of the clip's whole audio
                              (float16, not normalised; with ``segment_windows`` LAVISH's per-second windows side
                              by side, padded frames NaN), audio_present; metadata: ids, checksums, per-clip info
                              (seconds of media, short), the decoder (``harness.data.shards``)
    files.json                file -> [size, mtime_ns, blake2b]: checksums are computed once per file version
    manifest.json             counts, the ids of the missing, corrupt, duplicate and short clips, the clip -> shard
                              index, the decoder that ran (``pyav 18.1.0``), the hash

What a batch is cut from a clip (the window, crops, flips, masks, views) is chosen when the batch is made
(``harness.data.recipe``), so those keys do not select the folder; the frame grid, the stored short side, the JPEG
quality, the decoder and the log-mel settings do. A clip is keyed by its id and its file's checksum. A run reuses
every shard whose clips still match, so an interrupted prepare resumes where it stopped (at most one shard of work is
lost) and a grown dataset only decodes its new files. A file that cannot be decoded is skipped and counted as corrupt
(``strict``: the command fails naming it); a listed file that does not exist is counted as missing (YouTube datasets
are never complete), with a hint when a file of the same stem and another extension is there. A clip whose file ends
before the clip does is kept and counted as short. The manifest hash covers the settings and the (id, checksum) of
every decoded clip, so a run's tag says exactly on which subset a number was obtained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from harness.api.data import DatasetError
from harness.data import jpeg
from harness.data.annotations import ClipRecord, unique_clips
from harness.data.decode import CorruptMediaError, Decoded, decode, decoder_name
from harness.data.frontend import audio_features
from harness.data.shards import scan_shards, settings_hash, write_shard

SHARD_CLIPS = 64


class PrepareError(DatasetError):
    """``--strict`` met a corrupt file, or the listing is unusable; the message names the file."""


def file_checksum(path: Path) -> str:
    """blake2b (128-bit) of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def grid(duration: float, fps: float) -> list[float]:
    """Times (s from the clip's start) of the cache's frames: the centres of 1/fps slots covering the clip."""
    return [(k + 0.5) / fps for k in range(max(1, math.floor(duration * fps + 1e-6)))]


def decode_clip(job: tuple[str, float, float, dict], threads: int = 0) -> dict:
    """Decode one clip into what a shard stores (``harness.data.shards.write_shard``'s clip dict).

    ``job`` = (path, start, stop, settings); runs in a worker process, so it takes and returns plain values.
    ``threads``: FFmpeg's threads for this clip (0: its choice; 1 in each of ``--workers N`` processes).

    Raises:
        CorruptMediaError: the file does not decode, or the clip starts after its video ends.
    """
    from harness.data.frontend import FrontEndConfig

    path, start, stop, s = job
    fe = FrontEndConfig(**s["frontend"])
    times = [start + t for t in grid(stop - start, s["cache_fps"])]
    d = decode(path, times, start, stop, fe.sample_rate, s["cache_short_side"], s["decoder"], threads)
    info = clip_info(path, d, start, stop)
    wave = d.audio if d.audio is not None else torch.zeros(round((stop - start) * fe.sample_rate))
    return {
        "jpeg": jpeg.encode(d.video, s["jpeg_quality"]),
        # (M, frames of the whole clip), or LAVISH's (M, S x frames) windows; padded frames NaN (normalise fills them)
        "fbank": audio_features(wave, fe).to(torch.float16),
        "audio_present": d.audio is not None,
        "info": info,
    }


def clip_info(path: str, d: Decoded, start: float, stop: float) -> dict:
    """What a clip holds, from its decoded grid frames: ``seconds`` of media within the clip, ``short`` (the file
    ends first), ``hw`` of the stored frames, ``audio_seconds`` where the audio ends first.

    Raises:
        CorruptMediaError: no frame: the clip starts after the video ends.
    """
    if d.video.shape[0] == 0:
        raise CorruptMediaError(f"{path}: the clip starts at {start:.2f} s, after the video ends ({d.video_end:.2f} s)")
    seconds = min(stop, d.video_end) - start if d.video_end is not None else stop - start
    info = {"seconds": round(seconds, 4), "short": d.video_end is not None, "hw": list(d.video.shape[-2:])}
    if d.audio_end is not None:
        info["audio_seconds"] = round(d.audio_end - start, 4)
    return info


def clip_bytes(clip: dict) -> int:
    """Bytes a clip takes in a shard (frames, log-mel, offsets; metadata aside)."""
    return sum(j.numel() for j in clip["jpeg"]) + 8 * len(clip["jpeg"]) + clip["fbank"].numel() * 2 + 17


def _try(job, threads: int = 0):
    try:
        return decode_clip(job, threads), None
    except CorruptMediaError as e:
        return None, str(e)


def _try_packed(job, threads: int):
    """:func:`_try` in a worker process: the clip's tensors as numpy arrays, so the result is pickled as two byte
    strings (torch tensors would each be handed over as a shared-memory segment: 125 per clip at 12.5 fps)."""
    clip, err = _try(job, threads)
    if clip is not None:
        files = clip.pop("jpeg")
        clip["jpeg_lengths"] = [f.numel() for f in files]
        clip["jpeg_blob"] = torch.cat(files).numpy() if files else np.zeros(0, np.uint8)
        clip["fbank"] = clip["fbank"].numpy()
    return clip, err


def _unpack(result):
    clip, err = result
    if clip is not None and "jpeg_blob" in clip:
        blob = torch.from_numpy(clip.pop("jpeg_blob"))
        clip["jpeg"] = list(blob.split(clip.pop("jpeg_lengths")))
        clip["fbank"] = torch.from_numpy(clip["fbank"])
    return clip, err


def _worker_init() -> None:
    torch.set_num_threads(1)


def _results(jobs: list, workers: int, threads: int):
    """(clip, error) of every job in order: in this process, or in ``workers`` processes with a few jobs each in
    flight (no barrier between shards: the workers decode on while a shard is written)."""
    if workers <= 1:
        yield from (_try(j, threads) for j in jobs)
        return
    ahead = 4 * workers
    with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
        pending = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(_try_packed, job, threads))
                if len(pending) >= ahead:
                    yield _unpack(pending.popleft().result())
            while pending:
                yield _unpack(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()


def default_threads(workers: int) -> int:
    """FFmpeg threads per decoding process: its own choice in one process, the cores shared out among ``workers``."""
    return 0 if workers <= 1 else max(1, (os.cpu_count() or 1) // workers)


class _Checksums:
    """``files.json``: checksum per (file, size, mtime), so unchanged files are not read again."""

    def __init__(self, folder: Path):
        self.path = folder / "files.json"
        self.table = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, rel: str, path: Path) -> str:
        st = path.stat()
        hit = self.table.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        ck = file_checksum(path)
        self.table[rel] = [st.st_size, st.st_mtime_ns, ck]
        return ck

    def save(self) -> None:
        _write_json(self.path, self.table)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="clip", file=sys.stderr, disable=total == 0)
    except ImportError:

        class Line:
            n = 0

            def update(self, k: int) -> None:
                self.n += k
                print(f"\r{desc}: {self.n}/{total} clips", end="", file=sys.stderr, flush=True)

            def close(self) -> None:
                print(file=sys.stderr)

        return Line()


MEDIA_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".MP4")


def other_suffix(path: Path) -> Path | None:
    """A file of the same stem with another media suffix (a ``.webm`` where the card says ``.mp4``), or None."""
    for suffix in MEDIA_SUFFIXES:
        if suffix != path.suffix and path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    return None


def listed_files(records: list[ClipRecord], root: Path) -> tuple[list[ClipRecord], list[str], dict[str, str]]:
    """(the records whose file exists, the ids of the missing ones, a hint per missing id whose file exists with
    another media suffix): what ``harness prepare`` and ``cache: none`` both count as missing."""
    found, missing, hints = [], [], {}
    for r in records:
        path = root / r.file
        if path.is_file():
            found.append(r)
            continue
        missing.append(r.id)
        if (other := other_suffix(path)) is not None:
            hints[r.id] = f"{r.file} is absent but {other.relative_to(root).as_posix()} exists"
    return found, missing, hints


def estimate(records: list[ClipRecord], root: Path, settings: dict, sample: int = 4) -> dict:
    """Bytes per clip of the cache, measured by decoding up to ``sample`` of the listed files that exist.

    Returns:
        {"clips": measured, "bytes_per_clip": mean (0 when none decoded), "seconds_per_clip": decode time}.
    """
    import time

    sizes, took = [], 0.0
    for r in records:
        if len(sizes) == sample:
            break
        if (root / r.file).is_file():
            tick = time.perf_counter()
            clip, _ = _try((str(root / r.file), r.start, r.stop, settings))
            took += time.perf_counter() - tick
            if clip is not None:
                sizes.append(clip_bytes(clip))
    n = len(sizes)
    return {"clips": n, "bytes_per_clip": sum(sizes) / n if n else 0.0, "seconds_per_clip": took / n if n else 0.0}


def prepare(records: list[ClipRecord], root: Path, folder: Path, settings: dict, workers: int = 0,
            strict: bool = False, out=sys.stdout, threads: int | None = None,
            shard_clips: int = SHARD_CLIPS) -> dict:  # fmt: skip
    """Decode every listed clip not yet in ``folder`` and write ``manifest.json``; returns the manifest.

    Args:
        records: the clips the annotations list (every split).
        root: the dataset root the records' files are relative to.
        folder: the cache folder of these settings.
        settings: decoding settings (format, clip_seconds, cache_fps, cache_short_side, jpeg_quality, decoder,
            frontend dict): the folder's key.
        workers: decoding processes (0 or 1 = in this process).
        strict: raise :class:`PrepareError` naming the first corrupt file instead of skipping it.
        threads: FFmpeg threads per decoding process (None: :func:`default_threads`; 1 for a one-core measurement).
        shard_clips: clips per shard (an interrupted prepare loses at most the shard being filled).

    Raises:
        PrepareError: ``strict`` and a file could not be decoded.
    """
    records, duplicates = unique_clips(records)  # a row listed twice: its clip once, the row named below
    folder.mkdir(parents=True, exist_ok=True)
    decoder = decoder_name(settings["decoder"])
    have = scan_shards(folder)
    old = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    known_corrupt = old.get("corrupt_checksums", {})
    sums = _Checksums(folder)
    found, missing, hints = listed_files(records, root)
    todo, index, corrupt, errors, info = [], {}, {}, {}, {}
    for r in found:
        ck = sums.get(r.file, root / r.file)
        if r.id in have and have[r.id][2] == ck:
            index[r.id], info[r.id] = have[r.id][:3], have[r.id][3]
        elif known_corrupt.get(r.id, [None])[0] == ck and not strict:
            corrupt[r.id], errors[r.id] = ck, known_corrupt[r.id][1]
        else:
            todo.append((r, ck))
    sums.save()
    reused = len(index)
    bar = _progress(len(todo), f"decoding {len(todo)} clips")
    threads = default_threads(workers) if threads is None else threads
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one clip's fbank is too small to split; intra-op threads only contend (measured 15x)
    jobs = [(str(root / r.file), r.start, r.stop, settings) for r, _ in todo]
    ids, cks, outs = [], [], []

    def flush() -> None:
        name = write_shard(folder, ids, cks, outs, decoder)
        index.update({cid: (name, row, ck) for row, (cid, ck) in enumerate(zip(ids, cks))})
        info.update({cid: o["info"] for cid, o in zip(ids, outs)})
        ids.clear(), cks.clear(), outs.clear()

    results = _results(jobs, workers, threads)
    try:
        for (r, ck), (out_, err) in zip(todo, results):
            bar.update(1)
            if out_ is None:
                if strict:
                    if outs:
                        flush()  # keep what was decoded
                    raise PrepareError(f"corrupt media file {root / r.file} (clip {r.id}): {err}")
                corrupt[r.id], errors[r.id] = ck, err
                continue
            ids.append(r.id), cks.append(ck), outs.append(out_)
            if len(outs) == shard_clips:
                flush()
        if outs:
            flush()
    finally:
        results.close()  # a failure or an interrupt: cancel the clips not started, wait for those running
        torch.set_num_threads(torch_threads)
        bar.close()
    short = {k: v["seconds"] for k, v in info.items() if k in index and v["short"]}
    counts = {"listed": len(records), "found": len(records) - len(missing), "decoded": len(index),
              "missing": len(missing), "corrupt": len(corrupt), "short": len(short)}  # fmt: skip
    blob = json.dumps([settings_hash(settings), sorted((k, v[2]) for k, v in index.items())]).encode()
    manifest = {
        "counts": counts,
        "missing": missing,
        "missing_hints": hints,
        "corrupt": sorted(corrupt),
        "duplicates": duplicates,
        "errors": errors,
        "corrupt_checksums": {k: [ck, errors[k]] for k, ck in corrupt.items()},
        "short": short,
        "decoder": decoder,
        "settings": settings,
        "root": str(root),
        "clips": {k: list(v) for k, v in index.items()},
        "hash": hashlib.sha256(blob).hexdigest()[:16],
    }
    _write_json(folder / "manifest.json", manifest)
    if reused:
        print(f"reused {reused} clips already in {folder}", file=out)
    print(", ".join(f"{k} {v}" for k, v in counts.items()), file=out, flush=True)
    if hints:
        first = next(iter(hints.values()))
        print(f"hint: {len(hints)} missing files exist with another extension ({first}); point dataset.video_path "
              "at them (e.g. end it in .webm)", file=out)  # fmt: skip
    if short:
        print(f"note: {len(short)} clips end before clip_seconds (listed under 'short' in the manifest; "
              "dataset.short_clips says how they are filled)", file=out)  # fmt: skip
    if duplicates:
        print(f"dropped {len(duplicates)} duplicate annotation rows (manifest.json: duplicates)", file=out, flush=True)
    return manifest
