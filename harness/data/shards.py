"""The prepared cache's shard format, written by ``harness.data.prepare`` and read by ``harness.data.dataset``.

A folder of ``shard-NNNNN.safetensors`` files, each whole or absent (written atomically). A shard holds n clips, each
as its frames encoded as JPEG and the log-mel of its whole audio, so any window and any crop can be cut at train time:

| tensor | dtype, shape | what |
| --- | --- | --- |
| ``jpeg`` | uint8 (bytes,) | the JPEG files of every frame of every clip, end to end |
| ``jpeg_offsets`` | int64 (frames + 1,) | frame k is ``jpeg[jpeg_offsets[k]:jpeg_offsets[k + 1]]`` |
| ``clip_frames`` | int64 (n + 1,) | clip i's frames are ``clip_frames[i]:clip_frames[i + 1]`` |
| ``fbank`` | float16 (n_mels, columns) | the clips' log-mels (not normalised) side by side along time |
| ``clip_columns`` | int64 (n + 1,) | clip i's log-mel is ``fbank[:, clip_columns[i]:clip_columns[i + 1]]`` |
| ``audio_present`` | bool (n,) | False where the file has no audio stream (its log-mel is that of silence) |

Metadata: the clips' ``ids``, their files' ``checksums``, ``info`` (per clip: ``seconds`` of media available
within the clip, ``short`` when the file ends before the clip does) as JSON lists, and the ``decoder``. The frame grid
is the settings' ``cache_fps``: frame k of a clip plays at its start + (k + 0.5) / cache_fps.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from harness.data.storage import save_atomic

FORMAT_VERSION = 2  # 1: raw uint8 frames of fixed views (before issue 13)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps({"v": FORMAT_VERSION, **settings}, sort_keys=True).encode()).hexdigest()[:16]


def scan_shards(folder: Path) -> dict[str, tuple[str, int, str, dict]]:
    """Clips already in the folder's shards: id -> (shard file name, row, checksum, info); later shards win."""
    from safetensors import safe_open

    index = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            with safe_open(str(shard), "pt") as f:
                meta = f.metadata()
        except Exception:  # a shard cut short by a crash before its atomic rename cannot exist; be safe anyway
            continue
        for row, (cid, ck, info) in enumerate(
            zip(json.loads(meta["ids"]), json.loads(meta["checksums"]), json.loads(meta["info"]))
        ):
            index[cid] = (shard.name, row, ck, info)
    return index


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)


def write_shard(folder: Path, ids: list[str], checksums: list[str], clips: list[dict], decoder: str) -> str:
    """Write one shard of ``clips`` (each ``{"jpeg": [1-D uint8 tensors], "fbank": (M, F) float16,
    "audio_present": bool, "info": dict}``) atomically; returns its file name."""
    taken = [int(p.name[6:11]) for p in folder.glob("shard-*.safetensors")]
    name = f"shard-{max(taken, default=-1) + 1:05d}.safetensors"
    frames = [j for c in clips for j in c["jpeg"]]
    tensors = {
        "jpeg": torch.cat(frames) if frames else torch.zeros(0, dtype=torch.uint8),
        "jpeg_offsets": _offsets([j.numel() for j in frames]),
        "clip_frames": _offsets([len(c["jpeg"]) for c in clips]),
        "fbank": torch.cat([c["fbank"] for c in clips], dim=1).contiguous(),
        "clip_columns": _offsets([c["fbank"].shape[1] for c in clips]),
        "audio_present": torch.tensor([c["audio_present"] for c in clips], dtype=torch.bool),
    }
    meta = {"ids": json.dumps(ids), "checksums": json.dumps(checksums), "decoder": decoder,
            "info": json.dumps([c["info"] for c in clips])}  # fmt: skip
    save_atomic(tensors, folder / name, metadata=meta)  # a shard exists whole or not at all
    return name


class Shard:
    """One open shard: a clip's encoded frames and log-mel by row, read from the memory map."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.f = safe_open(str(path), "pt")
        self.info = json.loads(self.f.metadata()["info"])
        self.clip_frames = self.f.get_tensor("clip_frames").tolist()
        self.clip_columns = self.f.get_tensor("clip_columns").tolist()
        self.present = self.f.get_tensor("audio_present").tolist()
        self._offsets = self.f.get_slice("jpeg_offsets")
        self._jpeg, self._fbank = self.f.get_slice("jpeg"), self.f.get_slice("fbank")

    def n_frames(self, row: int) -> int:
        return self.clip_frames[row + 1] - self.clip_frames[row]

    def jpeg(self, row: int, frames: list[int]) -> list[torch.Tensor]:
        """The encoded frames ``frames`` (indices within the clip) of clip ``row``."""
        first = self.clip_frames[row]
        out = []
        for k in frames:
            a, b = self._offsets[first + k : first + k + 2].tolist()
            out.append(self._jpeg[a:b])
        return out

    def fbank(self, row: int) -> torch.Tensor:
        """(n_mels, frames) float16 log-mel of clip ``row``'s whole audio."""
        return self._fbank[:, self.clip_columns[row] : self.clip_columns[row + 1]]


class ShardReader:
    """Shards of one folder, opened on first use; at most ``keep`` stay open (least recent closed).

    Pickles without its open handles, so a DataLoader worker started by spawn opens its own.
    """

    def __init__(self, folder: Path, keep: int = 64):
        self.folder, self.keep = folder, keep
        self._open: OrderedDict[str, Shard] = OrderedDict()

    def __call__(self, name: str) -> Shard:
        if name not in self._open:
            if len(self._open) >= self.keep:
                self._open.popitem(last=False)
            self._open[name] = Shard(self.folder / name)
        self._open.move_to_end(name)
        return self._open[name]

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["keep"])


class ShardSource:
    """A split's clips read from the prepared shards: what :class:`harness.data.dataset.PreparedSplit` cuts its
    views from (:class:`harness.data.media.MediaSource` is the same from the media files).

    Args:
        folder: the cache folder.
        index: clip id -> (shard file name, row, checksum), the manifest's ``clips``.
    """

    def __init__(self, folder: Path, index: dict):
        self.index, self.shards = index, ShardReader(folder)

    def info(self, rec) -> tuple[float, int, tuple[int, int], bool]:
        """(media seconds, grid frames held, stored frame size, audio present) of a clip."""
        shard, row, _ = self.index[rec.id]
        sh = self.shards(shard)
        info = sh.info[row]
        return info["seconds"], sh.n_frames(row), tuple(info["hw"]), sh.present[row]

    def load(self, rec, frames: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The grid frames ``frames`` as (3, h, w) uint8 and the (n_mels, columns) float16 log-mel of the clip."""
        from harness.data import jpeg

        shard, row, _ = self.index[rec.id]
        sh = self.shards(shard)
        return (jpeg.decode(sh.jpeg(row, frames)) if frames else []), sh.fbank(row)
