"""Missing modalities: the helpers the methods and the tasks share to honour ``audio_present`` / ``video_present``.

A batch carries ``audio_present`` / ``video_present`` (B,) bool. An absent modality's patch tokens are never attention
keys (key padding) and never reach the read-out. A stream's own CLS token is always a key in that stream, so a clip
whose modality is absent still has one key per attention row (no NaN from an all-masked softmax) and its CLS output
depends on learned parameters only. A task averages per-modality logits over the present modalities.

When every clip has every modality no mask is built at all (:func:`complete`): the fused attention kernels (flash)
refuse any mask, and an all-True mask changes nothing. That is decided on the host, never by reading a device tensor
(a device-to-host sync stalls the GPU): from ``batch["complete_modalities"]``, which the engines set from the flags
right before the forward (:func:`mark_complete`), or from the ``<m>_present`` flags themselves when they are CPU
tensors (the engines keep them on the host; methods copy them to the device without blocking).

Shapes: ``B`` batch, ``N`` tokens of a sequence (CLS included), ``M`` modalities, ``D`` width.
"""

from __future__ import annotations

import torch
from torch import Tensor

COMPLETE = "complete_modalities"  # batch key: the modalities every clip of the batch has, a tuple set on the host


def present_masks(batch: dict, modalities: tuple[str, ...]) -> dict[str, Tensor]:
    """``{modality: (B,) bool}`` on the modality's device; a batch without a ``<m>_present`` key has that modality
    everywhere. Host flags are copied without blocking (no sync)."""
    out = {}
    for m in modalities:
        x = batch[m]
        mask = batch.get(f"{m}_present")
        if mask is None:
            out[m] = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        else:
            out[m] = mask.to(x.device, non_blocking=True)
    return out


def host_complete(batch: dict) -> tuple[str, ...]:
    """The modalities whose ``<m>_present`` flags are CPU tensors and all True (or absent: present everywhere).

    Flags on an accelerator are not read (that would be a sync): such a modality is not counted as complete, so the
    masks are used, which is always correct.
    """
    out = []
    for m in ("audio", "video"):
        flag = batch.get(f"{m}_present")
        if flag is None or (flag.device.type == "cpu" and bool(flag.all())):
            out.append(m)
    return tuple(out)


def mark_complete(batch: dict) -> dict:
    """``batch`` with ``complete_modalities`` (:func:`host_complete`), as a new dict; the engines call it right
    before each forward, after augmentation, so a compiled forward reads a Python constant instead of a tensor."""
    return {**batch, COMPLETE: host_complete(batch)}


def complete(batch: dict, modalities: tuple[str, ...]) -> bool:
    """True when every clip of ``batch`` has every one of ``modalities``, known on the host: then no key mask is
    needed. From ``batch["complete_modalities"]`` when set (:func:`mark_complete`), else :func:`host_complete`."""
    known = batch.get(COMPLETE)
    known = host_complete(batch) if known is None else known
    return all(m in known for m in modalities)


def keep_keys(present: Tensor, n_patches: int, keep_cls: Tensor | bool = True) -> Tensor:
    """Which keys of a ``[CLS ‖ patches]`` sequence may be attended: (B, 1 + n_patches) bool.

    Args:
        present: (B,) bool, whether the modality is present.
        n_patches: its patch tokens.
        keep_cls: whether its CLS is a key; True in its own stream, ``present`` in a joint sequence.
    """
    b = present.shape[0]
    # a Python bool becomes a filled tensor, not torch.as_tensor (a blocking host-to-device copy on a GPU)
    cls = torch.full((b, 1), keep_cls, device=present.device) if isinstance(keep_cls, bool) else keep_cls[:, None]
    return torch.cat([cls, present[:, None].expand(-1, n_patches)], dim=1)  # (B, 1 + n_patches)


def attn_mask(keep: Tensor) -> Tensor:
    """A (B, N) key-keep mask as the bool SDPA mask (B, 1, 1, N): True = may be attended, by every query."""
    return keep[:, None, None, :]


def stream_masks(z: dict[str, Tensor], present: dict[str, Tensor], full: bool) -> dict[str, Tensor | None]:
    """Each modality's own-sequence key mask ``{m: (B, 1, 1, 1 + N_m)}`` of ``z = {m: (B, 1 + N_m, D)}``, or
    ``{m: None}`` when ``full`` (:func:`complete`: every key is present, so SDPA may take its fused kernels)."""
    if full:
        return dict.fromkeys(z)
    return {m: attn_mask(keep_keys(present[m], x.shape[1] - 1)) for m, x in z.items()}


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
