"""Batch-level training augmentations: mixup, MBT's modality-mixup, and modality dropout.

Both engines call :func:`augment` once per training batch, after it is on the device and before the forward pass.
Every draw is a function of ``key = (seed, epoch, step)`` (and of the clip id for per-clip draws), so a trial is
reproducible, and data-parallel ranks holding different slices of one global batch draw the same mixup weight and
the same per-clip decisions as one process would.

- **mixup** (``train.mixup_alpha`` = α > 0; Zhang et al. 2018 as in scenic ``mixup_modalities``): each clip is
  mixed with its partner in the batch-reversed order, ``x' = w x + (1 - w) x[::-1]``, with one
  ``w ~ Beta(α, α)`` per batch for both modalities. Labels become soft targets (``Task.soft_targets``) mixed the
  same way. MBT uses α = 0.5.
- **modality-mixup** (``train.modality_mixup``, scenic ``mixmod=True``): an independent ``w_m`` per modality, the
  same partner. As scenic, each modality's mixed target is stored for its own logits (``label:<m>``: per-modality
  read-out trains modality m against it). scenic refuses a fused read-out under mixmod; here ``label`` is mixed with
  the mean of the ``w_m``, so every method can train with it.
- A mixed modality is present where the clip has it, or where its partner has it and contributes (``w < 1``).
- **modality dropout** (``train.modality_dropout`` = p): each clip that has both modalities loses one of them with
  probability p (audio or video, equally likely) by setting ``<m>_present`` False; a clip never loses both. The
  tensor itself is untouched: methods honour the masks (``harness.api.modalities``). Applied after mixup.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from harness.api import Task, tree_map
from harness.config import TrainConfig

MODALITIES = ("audio", "video")


def _digest(*parts: object) -> bytes:
    """16 bytes that depend only on ``parts`` (stable across processes, unlike ``hash``)."""
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest()


def mix_weights(alpha: float, per_modality: bool, key: tuple) -> dict[str, float]:
    """``{modality: w}`` with ``w ~ Beta(α, α)``: one draw for both, or one per modality (modality-mixup)."""
    rng = np.random.default_rng(int.from_bytes(_digest("mixup", *key)))
    w = rng.beta(alpha, alpha, size=len(MODALITIES) if per_modality else 1)
    return {m: float(w[i if per_modality else 0]) for i, m in enumerate(MODALITIES)}


def mixup(batch: dict, weights: dict[str, float], soft_targets) -> dict:
    """The batch mixed with its reversal: inputs with their modality's weight, targets as soft labels.

    Args:
        batch: a training batch (the sample contract, ``harness.api.inputs``).
        weights: ``{modality: w}``; w = 1 leaves that modality unchanged.
        soft_targets: the task's ``soft_targets`` (hard labels -> one-hot float targets).

    Returns:
        A new dict; ``label`` is the soft target mixed with the mean weight, and with distinct weights each modality
        also gets ``label:<m>`` mixed with its own.
    """
    out = dict(batch)
    y = soft_targets(batch["label"])
    mixed = lambda w: tree_map(lambda t: w * t + (1 - w) * t.flip(0), y)  # noqa: E731
    for m, w in weights.items():
        x = batch[m]
        out[m] = w * x + (1 - w) * x.flip(0)
        present = batch.get(f"{m}_present")
        if present is not None:
            out[f"{m}_present"] = present | (present.flip(0) & (w < 1))
    if len(set(weights.values())) > 1:
        out.update({f"label:{m}": mixed(w) for m, w in weights.items()})
    out["label"] = mixed(sum(weights.values()) / len(weights))
    return out


def clip_uniforms(ids: list[str], key: tuple, n: int = 2) -> Tensor:
    """(B, n) uniforms in [0, 1) per clip, drawn from its id and ``key`` (independent of batch order and sharding)."""
    rows = [np.frombuffer(_digest("clip", *key, i), dtype=np.uint32)[:n] for i in ids]
    return torch.from_numpy(np.stack(rows).astype(np.float64) / 2**32)


def drop_modalities(batch: dict, p: float, key: tuple) -> dict:
    """Each clip with both modalities loses one of them (chosen 50/50) with probability ``p``; never both.

    Returns:
        A new dict with ``audio_present`` / ``video_present`` updated; the tensors are left as they are.
    """
    u = clip_uniforms(batch["id"], key)  # (B, 2)
    audio, video = batch["audio_present"], batch["video_present"]
    drop = (u[:, 0] < p).to(audio.device) & audio & video  # (B,)
    drop_audio = drop & (u[:, 1] < 0.5).to(audio.device)
    return {**batch, "audio_present": audio & ~drop_audio, "video_present": video & ~(drop & ~drop_audio)}


def augment(batch: dict, task: Task, train: TrainConfig, key: tuple) -> dict:
    """The training batch after mixup (or modality-mixup) and modality dropout, as ``train`` asks.

    Args:
        batch: one training batch, on the device.
        task: the trial's task (its ``soft_targets`` for mixup).
        train: ``train.mixup_alpha``, ``train.modality_mixup``, ``train.modality_dropout``.
        key: ``(seed, epoch, step)``; every draw is a function of it.

    Returns:
        The batch itself when every augmentation is off, else a new dict.
    """
    if train.mixup_alpha > 0:
        batch = mixup(batch, mix_weights(train.mixup_alpha, train.modality_mixup, key), task.soft_targets)
    if train.modality_dropout > 0:
        batch = drop_modalities(batch, train.modality_dropout, key)
    return batch
