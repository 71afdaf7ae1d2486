"""What the built-in tasks share: top-k hits, targets on the logits' device, label smoothing."""

from __future__ import annotations

from torch import Tensor


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N, min(k, C)) bool: whether the j-th best class of each row is its label."""
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices == labels[..., None]


def target_like(y: Tensor, z: Tensor) -> Tensor:
    """``y`` on ``z``'s device; float targets also in ``z``'s dtype (bf16 under DeepSpeed)."""
    return y.to(z.device, z.dtype if y.is_floating_point() else None)


def smooth(y: Tensor, ls: float) -> Tensor:
    """scenic's ``apply_label_smoothing``: ``y (1 - ls) + ls / C`` over the last axis."""
    return y * (1 - ls) + ls / y.shape[-1] if ls else y
