"""``multihead`` (EPIC-KITCHENS-100): verb and noun heads on one embedding and their joint (action) accuracy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api.task import Task, TaskConfig
from harness.tasks.common import target_like, topk_hits


class MultiheadConfig(TaskConfig):
    """Keys under ``task:`` for ``multihead``."""

    heads: dict[str, int] = Field(
        default_factory=lambda: {"verb": 97, "noun": 300},
        min_length=1,
        description="classes of each head, keyed as the batch's label dict (EPIC-KITCHENS-100: 97 verbs, 300 "
        "nouns); their sum must equal the dataset's num_classes; with two or more heads, action = their joint",
    )
    head_reduction: Literal["mean", "sum"] = Field("mean", description="how the heads' CE losses combine "
                                                   "(scenic's multi-head MBT: mean)")  # fmt: skip


def joint_hits(scores: dict[str, Tensor], labels: dict[str, Tensor], k: int = 5) -> Tensor:
    """(N, k) hits of the joint class (one per combination of heads) ranked by the product of the heads' softmaxes.

    scenic ``get_joint_logits_labels``: outer product of the per-head probabilities (97 x 300 pairs for EPIC).
    """
    heads = list(scores)
    probs = [scores[h].float().softmax(-1) for h in heads]
    size = 1
    for p in probs:
        size *= p.shape[-1]
    chunk = max(1, 2**22 // size)  # bounded memory: chunk x size floats
    hits = []
    for i in range(0, len(probs[0]), chunk):
        joint, target = probs[0][i : i + chunk], labels[heads[0]][i : i + chunk]
        for h, p in zip(heads[1:], probs[1:]):
            joint = (joint[:, :, None] * p[i : i + chunk, None, :]).flatten(1)  # (n, C_1 ... C_h)
            target = target * p.shape[-1] + labels[h][i : i + chunk]
        hits.append(topk_hits(joint, target, k))
    return torch.cat(hits)


class MultiheadTask(Task):
    """Several single-label heads on one embedding (EPIC-KITCHENS-100 verb and noun) and their joint (action)."""

    Config = MultiheadConfig

    def __init__(self, cfg: MultiheadConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        if sum(cfg.heads.values()) != num_classes:
            raise ValueError(f"task.heads {cfg.heads} sum to {sum(cfg.heads.values())} classes but the dataset has "
                             f"num_classes={num_classes}; the heads must split the dataset's classes")  # fmt: skip
        self.heads = nn.ModuleDict({h: nn.Linear(embed_dim, c) for h, c in cfg.heads.items()})
        self.primary_metric = "action_top1" if len(cfg.heads) > 1 else f"{next(iter(cfg.heads))}_top1"

    def head_logits(self, embedding: Tensor) -> dict[str, Tensor]:
        return {h: head(embedding) for h, head in self.heads.items()}  # h -> (B, C_h)

    def example_loss(self, logits: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        ls = self.cfg.label_smoothing
        losses = torch.stack([F.cross_entropy(z, target_like(target[h], z), label_smoothing=ls, reduction="none")
                              for h, z in logits.items()])  # fmt: skip
        return losses.mean(0) if self.cfg.head_reduction == "mean" else losses.sum(0)

    def soft_targets(self, label: dict[str, Tensor]) -> dict[str, Tensor]:
        return {h: F.one_hot(label[h], c).float() for h, c in self.cfg.heads.items()}

    @torch.no_grad()
    def metrics(self, scores: dict[str, Tensor], labels: dict[str, Tensor]) -> dict[str, float]:
        """Top-1/top-5 of each head and of the action (joint argmax of the heads' softmax product), in percent."""
        out = {}
        hits = {h: topk_hits(scores[h], labels[h], 5) for h in self.cfg.heads}
        if len(self.cfg.heads) > 1:
            hits["action"] = joint_hits({h: scores[h] for h in self.cfg.heads}, labels)
        for name, hit in hits.items():
            out[f"{name}_top1"] = 100.0 * hit[:, 0].float().mean().item()
            out[f"{name}_top5"] = 100.0 * hit.any(1).float().mean().item()
        return out
