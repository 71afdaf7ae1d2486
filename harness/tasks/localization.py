"""``localization`` (AVE): per-segment event classification with one head applied to every segment; seg_acc.

Scoring (``scoring``): ``segment`` (default) runs the method on each of a clip's S (frame(s), 1-s audio) pairs
(``harness.api.segments``), so every method returns (B, S, D) and can predict a class per second, as LAVISH classifies
each of AVE's 10 pairs; ``clip`` runs it on the whole clip and broadcasts its (B, D) embedding to the S segments (one
class per clip: the floor that a clip-level prediction reaches). Head and loss: by default the harness's shared head
(each modality's embedding scored, logits averaged, as for every task) under softmax cross-entropy; LAVISH's AVE head
and loss are options (GenjiB/LAVISH ``AVE/nets/net_trans.py``, ``AVE/main_trans.py``): ``head_input: concat`` with
``hidden: 512`` is [a; v] -> Linear(2D, 512) -> Linear(512, C), no nonlinearity (``forward_vit``; ``forward_swin``
concatenates [v; a], the same function up to a permutation of the first layer's inputs), and ``loss: bce_softmax`` is
``nn.BCELoss`` on the softmax of the logits against one-hot targets (the code's ``criterion``).

Shapes: ``B`` clips, ``S`` segments, ``C`` classes (the last one background), ``D`` embedding width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import present_masks
from harness.api.task import Task, TaskConfig
from harness.tasks.common import smooth, target_like

CONCAT_ORDER = ("audio", "video")  # LAVISH's forward_vit: torch.cat((a_cls, v_cls), dim=-1)


class LocalizationConfig(TaskConfig):
    """Keys under ``task:`` for ``localization``."""

    segments: int = Field(10, ge=1, description="S, labelled segments per clip (AVE: 10 one-second segments)")
    scoring: Literal["segment", "clip"] = Field(
        "segment",
        description="segment: the method runs on each (frame(s), audio window) pair of a clip and is scored per "
        "pair (LAVISH's AVE); clip: one embedding of the whole clip broadcast to all S segments",
    )
    hidden: int | None = Field(
        None,
        ge=1,
        description="LAVISH's AVE head: Linear(D, hidden) then Linear(hidden, C), no nonlinearity between "
        "(LAVISH: 512); null = one Linear(D, C)",
    )
    head_input: Literal["shared", "concat"] = Field(
        "shared",
        description="shared: the head scores each modality's embedding, logits averaged over the present ones (every "
        "method, MBT's read-out); concat: one head on [audio; video] (2D; LAVISH's AVE head; an absent half is 0)",
    )
    loss: Literal["ce", "bce_softmax"] = Field(
        "ce", description="ce: softmax cross-entropy; bce_softmax: BCE on the softmax of the logits (LAVISH's AVE code)"
    )

    def method_segments(self) -> int:
        return self.segments if self.scoring == "segment" else 0


class LocalizationTask(Task):
    """Per-segment event classification (AVE): C classes per segment, the last one background."""

    Config = LocalizationConfig
    primary_metric = "seg_acc"

    def __init__(self, cfg: LocalizationConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        d, h = (2 if cfg.head_input == "concat" else 1) * embed_dim, cfg.hidden
        self.head = nn.Sequential(nn.Linear(d, h), nn.Linear(h, num_classes)) if h else nn.Linear(d, num_classes)

    def head_logits(self, embedding: Tensor) -> Tensor:
        if embedding.dim() == 2:  # one clip embedding (scoring: clip): the same for every segment
            embedding = embedding[:, None].expand(-1, self.cfg.segments, -1)  # (B, S, D)
        return self.head(embedding)  # (B, S, C)

    def concat(self, out: dict, batch: dict | None) -> Tensor:
        """[audio; video] embeddings (B, S, 2D) for LAVISH's head; an absent modality's half is 0."""
        per = out.get("per_modality") or {}
        if set(per) != set(CONCAT_ORDER):
            got = sorted(per) or "none"
            raise ValueError(f"task.head_input=concat needs per-modality audio and video embeddings; the method "
                             f"returned {got} (e.g. readout gap pools both); use task.head_input=shared")  # fmt: skip
        present = present_masks(batch, CONCAT_ORDER) if batch is not None else None
        parts = []
        for m in CONCAT_ORDER:
            x = per[m]  # (B, S, D) or (B, D)
            if present is not None:
                keep = present[m].view(-1, *[1] * (x.dim() - 1))
                x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
            parts.append(x)
        return torch.cat(parts, dim=-1)

    def logits(self, out: dict, batch: dict | None = None) -> Tensor:
        if self.cfg.head_input == "concat":
            return self.head_logits(self.concat(out, batch))
        return super().logits(out, batch)

    def loss(self, out: dict, batch: dict) -> Tensor:
        if self.cfg.head_input == "concat":  # one head over both modalities: no per-modality losses
            return self.example_loss(self.logits(out, batch), batch["label"]).mean()
        return super().loss(out, batch)

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        b, s, c = logits.shape
        if target.shape[1] != s:
            raise ValueError(f"localization: the labels have {target.shape[1]} segments per clip but the logits "
                             f"{s}; set task.segments={target.shape[1]}")  # fmt: skip
        y = target_like(target, logits)
        if self.cfg.loss == "bce_softmax":
            # nn.BCELoss on F.softmax(logits): its mean over B·S·C elements is the mean over clips of this (B,) loss.
            # Written out in float32 (BCELoss refuses autocast), logs clamped at -100 as BCELoss does.
            y = smooth(y.float() if y.is_floating_point() else F.one_hot(y, c).float(), self.cfg.label_smoothing)
            p = logits.float().softmax(-1)
            bce = -(y * p.log().clamp(min=-100) + (1 - y) * (1 - p).log().clamp(min=-100))  # (B, S, C)
            return bce.mean((1, 2))
        y = y.flatten(0, 1) if y.is_floating_point() else y.reshape(-1)  # (B S, C) or (B S,)
        loss = F.cross_entropy(logits.reshape(-1, c), y, label_smoothing=self.cfg.label_smoothing, reduction="none")
        return loss.view(b, s).mean(1)

    def soft_targets(self, label: Tensor) -> Tensor:
        return F.one_hot(label, self.num_classes).float()  # (B, S, C)

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """Segment accuracy in percent: argmax = label over all segments of all clips (LAVISH's eval)."""
        return {"seg_acc": 100.0 * (scores.argmax(-1) == labels).float().mean().item()}
