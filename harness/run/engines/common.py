"""What both engines share beyond the torch engine's loop: micro-batches and the checkpoint's training state."""

from __future__ import annotations

import torch
from torch import nn


def _slice(value, lo: int, hi: int):
    """Rows ``lo:hi`` of a batch entry: a tensor, a list (ids) or a dict of them (multi-head labels)."""
    if isinstance(value, dict):
        return {k: _slice(v, lo, hi) for k, v in value.items()}
    return value[lo:hi] if torch.is_tensor(value) or isinstance(value, list) else value


def micro_batches(batch: dict, n: int) -> list[dict]:
    """``batch`` split into ``n`` contiguous micro-batches along the batch dimension (``train.grad_accum``)."""
    if n == 1:
        return [batch]
    rows = len(batch["id"])
    if rows < n:  # an engine steps after exactly n micro-batches: an empty one would shift its boundary
        raise ValueError(
            f"a batch of {rows} clips cannot make train.grad_accum={n} micro-batches; raise train.batch_size "
            "or lower train.grad_accum (or engine.workers)"
        )
    bounds = [b.tolist() for b in torch.arange(rows).tensor_split(n)]
    return [{k: _slice(v, b[0], b[-1] + 1) for k, v in batch.items()} for b in bounds]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of ``model.state_dict()`` that training changes: trainable parameters and buffers (norm statistics);
    frozen parameters are left out (the rebuilt model has them)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` (or a whole state dict) into ``model``.

    Raises:
        KeyError: a key the model lacks, or a trainable parameter or buffer the state lacks.
    """
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in frozen]
    if missing or result.unexpected_keys:
        raise KeyError(f"the checkpoint does not fit the model: missing {missing[:5]}, unexpected "
                       f"{result.unexpected_keys[:5]} (another method or backbone?)")  # fmt: skip


def host_copy(tree):
    """``tree`` with every tensor copied to the host (a snapshot: training may change the originals)."""
    if torch.is_tensor(tree):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: host_copy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(host_copy(v) for v in tree)
    return tree
