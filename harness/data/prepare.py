"""Decode a dataset once into a sharded cache: ``harness prepare DATASET --root DIR``.

The cache of one dataset and one set of decoding settings is a folder ``<cache>/<settings hash>/``:

    shard-00000.safetensors   video uint8 (n, V, T, 3, H, W), fbank float16 (n, V, n_mels, target_frames) (log-mel,
                              not normalised: the normalisation is applied when batches are read), audio_present
                              bool (n,); metadata: the clip ids, their files' checksums and the decoder
    files.json                file -> [size, mtime_ns, blake2b]: checksums are computed once per file version
    manifest.json             counts, the ids of the missing, corrupt and duplicate clips, clip -> shard, the hash

A clip is keyed by its id and its file's checksum; the settings (frames, image size, views, front end) key the
folder. A run reuses every shard whose clips still match, so an interrupted prepare resumes where it stopped (at
most one shard of work is lost) and a grown dataset only decodes its new files. A file that cannot be decoded is
skipped and counted as corrupt (``strict``: the command fails naming it); a listed file that does not exist is
counted as missing (YouTube datasets are never complete). The manifest hash covers the settings and the
(id, checksum) of every decoded clip, so a run's tag says exactly on which subset a number was obtained.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from harness.data.annotations import ClipRecord, unique_clips
from harness.data.decode import CorruptMediaError, decode, decoder_name
from harness.data.frontend import kaldi_fbank
from harness.data.shards import scan_shards, settings_hash, write_shard

SHARD_CLIPS = 64


class PrepareError(RuntimeError):
    """``--strict`` met a corrupt file, or the listing is unusable; the message names the file."""


def file_checksum(path: Path) -> str:
    """blake2b (128-bit) of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def views(duration: float, window: float | None, n_views: int) -> list[tuple[float, float]]:
    """``n_views`` windows of ``window`` seconds evenly spaced over [0, duration] (one: the centred one)."""
    w = min(window or duration, duration)
    if n_views == 1:
        return [((duration - w) / 2, (duration + w) / 2)]
    return [(i * (duration - w) / (n_views - 1), i * (duration - w) / (n_views - 1) + w) for i in range(n_views)]


def decode_clip(job: tuple[str, float, float, dict]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Decode one clip's views: (video uint8 (V, T, 3, H, W), fbank float16 (V, M, F), audio present).

    ``job`` = (path, start, stop, settings); runs in a worker process, so it takes and returns plain values.
    """
    from harness.data.frontend import FrontEndConfig

    path, start, stop, s = job
    fe = FrontEndConfig(**s["frontend"])
    duration = max(stop - start, 1e-3)
    wins = views(duration, s["window_seconds"], s["views"])
    t = s["frames"]
    times = [start + a + (i + 0.5) * (b - a) / t for a, b in wins for i in range(t)]  # centre of each frame slot
    audio_len = min(s["audio_seconds"] or duration, duration)
    spans = []
    for a, b in wins:
        mid = min(max((a + b) / 2, audio_len / 2), duration - audio_len / 2)
        spans.append((mid - audio_len / 2, mid + audio_len / 2))
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    d = decode(path, times, start + lo, start + hi, s["image_size"], s["resize"] or s["image_size"],
               fe.sample_rate, s["decoder"])  # fmt: skip
    video = d.video.view(len(wins), t, *d.video.shape[1:])
    wave = d.audio if d.audio is not None else torch.zeros(round((hi - lo) * fe.sample_rate))
    fb = []
    for a, b in spans:
        i, j = round((a - lo) * fe.sample_rate), round((b - lo) * fe.sample_rate)
        fb.append(kaldi_fbank(wave[i:j], fe))
    return video, torch.stack(fb).to(torch.float16), d.audio is not None


def _try(job):
    try:
        return decode_clip(job), None
    except CorruptMediaError as e:
        return None, str(e)


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


def prepare(records: list[ClipRecord], root: Path, folder: Path, settings: dict, workers: int = 0,
            strict: bool = False, out=sys.stdout) -> dict:  # fmt: skip
    """Decode every listed clip not yet in ``folder`` and write ``manifest.json``; returns the manifest.

    Args:
        records: the clips the annotations list (every split).
        root: the dataset root the records' files are relative to.
        folder: the cache folder of these settings.
        settings: decoding settings (frames, image_size, resize, views, window_seconds, audio_seconds, decoder,
            frontend dict): the folder's key.
        workers: decoding processes (0 = in this process).
        strict: raise :class:`PrepareError` naming the first corrupt file instead of skipping it.

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
    missing, todo, index, corrupt, errors = [], [], {}, {}, {}
    for r in records:
        path = root / r.file
        if not path.is_file():
            missing.append(r.id)
            continue
        ck = sums.get(r.file, path)
        if r.id in have and have[r.id][2] == ck:
            index[r.id] = have[r.id]
        elif known_corrupt.get(r.id, [None])[0] == ck and not strict:
            corrupt[r.id], errors[r.id] = ck, known_corrupt[r.id][1]
        else:
            todo.append((r, ck))
    sums.save()
    reused = len(index)
    bar = _progress(len(todo), f"decoding {len(todo)} clips")
    pool = ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one clip's fbank is too small to split; intra-op threads only contend (measured 15x)
    try:
        for at in range(0, len(todo), SHARD_CLIPS):
            chunk = todo[at : at + SHARD_CLIPS]
            jobs = [(str(root / r.file), r.start, r.stop, settings) for r, _ in chunk]
            results = pool.map(_try, jobs) if pool else map(_try, jobs)
            ids, cks, outs = [], [], []
            for (r, ck), (out_, err) in zip(chunk, results):
                bar.update(1)
                if out_ is None:
                    if strict:
                        if outs:
                            write_shard(folder, ids, cks, outs, decoder)  # keep what was decoded
                        raise PrepareError(f"corrupt media file {root / r.file} (clip {r.id}): {err}")
                    corrupt[r.id], errors[r.id] = ck, err
                    continue
                ids.append(r.id), cks.append(ck), outs.append(out_)
            if outs:
                name = write_shard(folder, ids, cks, outs, decoder)
                index.update({cid: (name, row, ck) for row, (cid, ck) in enumerate(zip(ids, cks))})
    finally:
        torch.set_num_threads(threads)
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    counts = {"listed": len(records), "found": len(records) - len(missing), "decoded": len(index),
              "missing": len(missing), "corrupt": len(corrupt)}  # fmt: skip
    blob = json.dumps([settings_hash(settings), sorted((k, v[2]) for k, v in index.items())]).encode()
    manifest = {
        "counts": counts,
        "missing": missing,
        "corrupt": sorted(corrupt),
        "duplicates": duplicates,
        "errors": errors,
        "corrupt_checksums": {k: [ck, errors[k]] for k, ck in corrupt.items()},
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
    if duplicates:
        print(f"dropped {len(duplicates)} duplicate annotation rows (manifest.json: duplicates)", file=out, flush=True)
    return manifest
