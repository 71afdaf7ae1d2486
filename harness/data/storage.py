"""Where the harness keeps what it generates and prepares, and how it writes a file no reader sees half of."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor


def harness_cache() -> Path:
    """The default cache of generated and prepared data: ``$HARNESS_CACHE`` or ~/.cache/fusion-harness."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "fusion-harness")


def save_atomic(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file whole or not at all: to a per-process temporary name, then an atomic rename.

    Concurrent writers of the same path (two trials filling one cache) never interleave, and a reader never sees half
    a file; the last rename wins, which is harmless where writers produce the same content.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
