"""The prepared cache's shard format, written by ``harness.data.prepare`` and read by ``harness.data.dataset``.

A folder of ``shard-NNNNN.safetensors`` files, each whole or absent (written atomically): tensors ``video`` uint8
(n, V, T, 3, H, W), ``fbank`` (n, V, M, F) and ``audio_present`` bool (n,), with the clips' ``ids``, their files'
``checksums`` (JSON lists) and the ``decoder`` as metadata; the folder's name is the hash of the decoding settings.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from harness.data.storage import save_atomic


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps({"v": 1, **settings}, sort_keys=True).encode()).hexdigest()[:16]


def scan_shards(folder: Path) -> dict[str, tuple[str, int, str]]:
    """Clips already in the folder's shards: id -> (shard file name, row, checksum); later shards win."""
    from safetensors import safe_open

    index = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            with safe_open(str(shard), "pt") as f:
                meta = f.metadata()
        except Exception:  # a shard cut short by a crash before its atomic rename cannot exist; be safe anyway
            continue
        for row, (cid, ck) in enumerate(zip(json.loads(meta["ids"]), json.loads(meta["checksums"]))):
            index[cid] = (shard.name, row, ck)
    return index


def write_shard(folder: Path, ids: list[str], checksums: list[str], outs: list, decoder: str) -> str:
    taken = [int(p.name[6:11]) for p in folder.glob("shard-*.safetensors")]
    name = f"shard-{max(taken, default=-1) + 1:05d}.safetensors"
    tensors = {
        "video": torch.stack([o[0] for o in outs]),
        "fbank": torch.stack([o[1] for o in outs]),
        "audio_present": torch.tensor([o[2] for o in outs], dtype=torch.bool),
    }
    meta = {"ids": json.dumps(ids), "checksums": json.dumps(checksums), "decoder": decoder}
    save_atomic(tensors, folder / name, metadata=meta)  # a shard exists whole or not at all
    return name


class ShardReader:
    """Memory-mapped shards of one folder, opened on first use; at most ``keep`` stay open (least recent closed)."""

    def __init__(self, folder: Path, keep: int = 64):
        self.folder, self.keep = folder, keep
        self._handles: OrderedDict[str, object] = OrderedDict()

    def __call__(self, name: str):
        """The open ``safe_open`` handle of shard ``name``."""
        from safetensors import safe_open

        if name not in self._handles:
            if len(self._handles) >= self.keep:
                self._handles.popitem(last=False)
            self._handles[name] = safe_open(str(self.folder / name), "pt")
        self._handles.move_to_end(name)
        return self._handles[name]
