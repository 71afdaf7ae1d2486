"""Missing modalities: the helpers the methods and the tasks share to honour ``audio_present`` / ``video_present``.

A batch carries ``audio_present`` / ``video_present`` (B,) bool. An absent modality's patch tokens are never attention
keys (key padding) and never reach the read-out. A stream's own CLS token is always a key in that stream, so a clip
whose modality is absent still has one key per attention row (no NaN from an all-masked softmax) and its CLS output
depends on learned parameters only. A task averages per-modality logits over the present modalities.

Shapes: ``B`` batch, ``N`` tokens of a sequence (CLS included), ``M`` modalities, ``D`` width.
"""

from __future__ import annotations

import torch
from torch import Tensor


def present_masks(batch: dict, modalities: tuple[str, ...]) -> dict[str, Tensor]:
    """``{modality: (B,) bool}``; a batch without a ``<m>_present`` key has that modality everywhere."""
    out = {}
    for m in modalities:
        x = batch[m]
        mask = batch.get(f"{m}_present")
        out[m] = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
    return out


def keep_keys(present: Tensor, n_patches: int, keep_cls: Tensor | bool = True) -> Tensor:
    """Which keys of a ``[CLS ‖ patches]`` sequence may be attended: (B, 1 + n_patches) bool.

    Args:
        present: (B,) bool, whether the modality is present.
        n_patches: its patch tokens.
        keep_cls: whether its CLS is a key; True in its own stream, ``present`` in a joint sequence.
    """
    cls = torch.as_tensor(keep_cls, device=present.device).expand(present.shape[0])[:, None]  # (B, 1)
    return torch.cat([cls, present[:, None].expand(-1, n_patches)], dim=1)  # (B, 1 + n_patches)


def attn_mask(keep: Tensor) -> Tensor:
    """A (B, N) key-keep mask as the bool SDPA mask (B, 1, 1, N): True = may be attended, by every query."""
    return keep[:, None, None, :]


def modality_weights(present: dict[str, Tensor]) -> Tensor:
    """(B, M) weights of a mean over present modalities; a clip with none present averages all of them.

    The fallback keeps outputs finite (and data-independent, since only CLS tokens are then valid).
    """
    w = torch.stack([p for p in present.values()], dim=1).float()  # (B, M)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    return w / w.sum(1, keepdim=True)


def mean_over_modalities(x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """Mean of per-modality tensors (B, ...) over the present modalities of each clip."""
    w = modality_weights({m: present[m] for m in x})  # (B, M)
    stacked = torch.stack(list(x.values()), dim=1)  # (B, M, ...)
    w = w.reshape(w.shape + (1,) * (stacked.dim() - 2))
    return (w * stacked).sum(1)
