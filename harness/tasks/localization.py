"""``localization`` (AVE): per-segment event classification with one head applied to every segment; seg_acc."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api.task import Task, TaskConfig
from harness.tasks.common import target_like


class LocalizationConfig(TaskConfig):
    """Keys under ``task:`` for ``localization``."""

    segments: int = Field(
        10,
        ge=1,
        description="S, labelled segments per clip (AVE: 10 one-second segments); a method that returns one (B, D) "
        "embedding per clip has it broadcast to all S segments",
    )
    hidden: int | None = Field(
        None,
        ge=1,
        description="LAVISH's AVE head: Linear(D, hidden) then Linear(hidden, C), no nonlinearity between "
        "(LAVISH: 512); null = one Linear(D, C)",
    )


class LocalizationTask(Task):
    """Per-segment event classification (AVE): C classes per segment, the last one background.

    A method may return per-segment embeddings (B, S, D); one that returns a clip embedding (B, D) has it
    broadcast over the S segments, so it can only predict one class for the whole clip (a documented floor,
    not an error: every method can be scored). LAVISH trains ``BCELoss`` on the softmax; here it is the softmax CE.
    """

    Config = LocalizationConfig
    primary_metric = "seg_acc"

    def __init__(self, cfg: LocalizationConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        h = cfg.hidden
        self.head = (nn.Sequential(nn.Linear(embed_dim, h), nn.Linear(h, num_classes)) if h
                     else nn.Linear(embed_dim, num_classes))  # fmt: skip

    def head_logits(self, embedding: Tensor) -> Tensor:
        if embedding.dim() == 2:  # one clip embedding: the same for every segment
            embedding = embedding[:, None].expand(-1, self.cfg.segments, -1)  # (B, S, D)
        return self.head(embedding)  # (B, S, C)

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        b, s, c = logits.shape
        if target.shape[1] != s:
            raise ValueError(f"localization: the labels have {target.shape[1]} segments per clip but the logits "
                             f"{s}; set task.segments={target.shape[1]} or return (B, S, D) embeddings")  # fmt: skip
        y = target_like(target, logits)
        y = y.flatten(0, 1) if y.is_floating_point() else y.reshape(-1)  # (B S, C) or (B S,)
        loss = F.cross_entropy(logits.reshape(-1, c), y, label_smoothing=self.cfg.label_smoothing, reduction="none")
        return loss.view(b, s).mean(1)

    def soft_targets(self, label: Tensor) -> Tensor:
        return F.one_hot(label, self.num_classes).float()  # (B, S, C)

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """Segment accuracy in percent: argmax = label over all segments of all clips."""
        return {"seg_acc": 100.0 * (scores.argmax(-1) == labels).float().mean().item()}
