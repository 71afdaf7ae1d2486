"""JPEG encoding and decoding of cached frames (libjpeg-turbo through torchvision.io).

torchvision 0.29 marks its image codecs deprecated in favour of torchcodec's, which need system FFmpeg; the
prepared cache must work without it, so these stay on torchvision's (with its warning silenced here) until
torchcodec's image codecs stand alone.
"""

from __future__ import annotations

import warnings

import torch


def encode(frames: torch.Tensor, quality: int) -> list[torch.Tensor]:
    """(N, 3, H, W) uint8 -> N 1-D uint8 tensors (JPEG files)."""
    from torchvision.io import encode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return encode_jpeg(list(frames), quality=quality) if frames.shape[0] else []


def decode(files: list[torch.Tensor]) -> list[torch.Tensor]:
    """JPEG files -> (3, H, W) uint8 tensors."""
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(files) if files else []
