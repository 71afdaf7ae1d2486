"""``multilabel`` (AudioSet): sigmoid BCE on multi-hot targets; mAP and AUC in torch, as sklearn computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api.task import Task, TaskConfig
from harness.tasks.common import smooth


def _tie_ends(s: Tensor) -> Tensor:
    """For each row of column-sorted ``s`` (N, C), the row index of the last row of its run of equal values."""
    n = s.shape[0]
    rows = torch.arange(n, device=s.device)[:, None].expand_as(s)
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[:-1] != s[1:]
    idx = torch.where(is_end, rows, torch.full_like(rows, n))
    return idx.flip(0).cummin(0).values.flip(0)  # (N, C): nearest end at or below each row


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """(C,) average precision per class over N clips, as sklearn's ``average_precision_score``.

    AP = sum over thresholds (distinct scores, high to low) of (R_k - R_{k-1}) P_k; tied scores are one threshold.
    NaN for a class without positives.

    Args:
        scores: (N, C), higher = more likely.
        targets: (N, C), 1 for a positive (values > 0.5 count as positive).
    """
    s, order = scores.double().sort(0, descending=True)  # (N, C)
    y = (targets > 0.5).gather(0, order).double()  # (N, C)
    precision = y.cumsum(0) / torch.arange(1, len(y) + 1, device=y.device, dtype=y.dtype)[:, None]
    at_end = precision.gather(0, _tie_ends(s))  # precision at the threshold that admits each row
    return (y * at_end).sum(0) / y.sum(0)


def roc_auc(scores: Tensor, targets: Tensor) -> Tensor:
    """(C,) area under the ROC curve per class (Mann-Whitney U with tied ranks averaged).

    NaN for a class without positives or without negatives.
    """
    s, order = scores.double().sort(0)  # ascending (N, C)
    y = (targets > 0.5).gather(0, order).double()
    n = len(s)
    rows = torch.arange(n, device=s.device)[:, None].expand_as(s)
    is_start = torch.ones_like(s, dtype=torch.bool)
    is_start[1:] = s[1:] != s[:-1]
    start = torch.where(is_start, rows, torch.full_like(rows, -1)).cummax(0).values
    rank = (start + _tie_ends(s)).double() / 2 + 1  # (N, C) average 1-based rank of each row's value
    pos = y.sum(0)
    neg = n - pos
    return ((y * rank).sum(0) - pos * (pos + 1) / 2) / (pos * neg)


class MultilabelConfig(TaskConfig):
    """Keys under ``task:`` for ``multilabel``."""

    sum_over_classes: bool = Field(
        False,
        description="sum the per-class BCE of a clip (scenic/MBT) instead of averaging it (torch, AST); "
        "the sum scales the loss by C. Over classes only: the clips of a batch are averaged, as scenic's "
        "weighted_sigmoid_cross_entropy divides by them (a batch-level reduction is the trainer's business)",
    )


class MultilabelTask(Task):
    """Multi-label classification (AudioSet): sigmoid BCE on multi-hot targets; mAP and AUC over classes."""

    Config = MultilabelConfig
    primary_metric = "map"

    def __init__(self, cfg: MultilabelConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def head_logits(self, embedding: Tensor) -> Tensor:
        return self.head(embedding)  # (B, C)

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        y = smooth(target.to(logits.device, logits.dtype), self.cfg.label_smoothing)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, C)
        return loss.sum(1) if self.cfg.sum_over_classes else loss.mean(1)

    def soft_targets(self, label: Tensor) -> Tensor:
        return label.float()

    def scores(self, out: dict, batch: dict | None = None) -> Tensor:
        return self.logits(out, batch).sigmoid()  # (B, C) probabilities: what views average

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """mAP: mean AP over classes with a positive (scenic's nanmean); AUC: mean over classes with both kinds."""
        return {"map": 100.0 * average_precision(scores, labels).nanmean().item(),
                "auc": 100.0 * roc_auc(scores, labels).nanmean().item()}  # fmt: skip
