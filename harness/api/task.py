"""The task contract: a task owns the head(s), the loss and the metrics, so every method is scored by the same head.

A task is built as ``Task(cfg, num_classes, embed_dim)`` and subclasses :class:`Task`, implementing four hooks
(:meth:`Task.head_logits`, :meth:`Task.example_loss`, :meth:`Task.soft_targets`, :meth:`Task.metrics`) and naming
its ``primary_metric``, the one that reports sort and compare by. The base does what every task shares:

- **Per-modality read-out** (MBT's ``classifier='token'``, a method returning ``per_modality``): the same head scores
  each modality's embedding; training averages the per-modality losses over the modalities present in each clip,
  each against its own target ``label:<m>`` where modality-mixup made one (scenic ``label[modality]``); evaluation
  averages the per-modality logits over the present modalities (MBT §3.3, scenic ``MBT.__call__``).
- **Soft targets**: every loss takes hard labels or float targets of the same layout with a class axis (mixup,
  ``harness.run.augment``); :meth:`Task.soft_targets` turns hard labels into one-hot ones.
- **Evaluation** (:meth:`Task.summarize`): per-clip ``scores`` of every batch are concatenated, the views of one clip
  (equal ``id``; multi-clip testing) are averaged, then :meth:`Task.metrics` runs once over the whole split.

Shapes: ``B`` clips, ``N`` clips of a split, ``C`` classes, ``S`` segments, ``D`` embedding width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from harness.api.modalities import mean_over_modalities, present_masks

Tree = Tensor | dict[str, Tensor]  # a tensor, or one per head (multihead)


def tree_map(fn: Callable[..., Tensor], *trees: Tree) -> Tree:
    """``fn`` applied leaf-wise to tensors or to equally keyed dicts of tensors."""
    if isinstance(trees[0], dict):
        return {k: fn(*(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def average_views(scores: Tree, labels: Tree, ids: list[str]) -> tuple[Tree, Tree]:
    """Scores averaged over the views of each clip (rows with equal ``id``), in order of first appearance.

    Raises:
        ValueError: two views of one id carry different labels.
    """
    index: dict[str, int] = {}
    inv = torch.tensor([index.setdefault(i, len(index)) for i in ids], dtype=torch.long)  # (N,) view -> clip
    n = len(index)
    if n == len(ids):
        return scores, labels
    counts = torch.bincount(inv, minlength=n).float()  # (n,)
    first = torch.full((n,), len(ids), dtype=torch.long).scatter_reduce(0, inv, torch.arange(len(ids)), "amin")

    def mean(s: Tensor) -> Tensor:
        total = torch.zeros((n, *s.shape[1:]), dtype=s.dtype).index_add_(0, inv, s)
        return total / counts.view(-1, *[1] * (s.dim() - 1))

    def first_label(y: Tensor) -> Tensor:
        same = (y == y[first][inv]).reshape(len(ids), -1).all(1)  # (N,)
        if not same.all():
            bad = ids[int((~same).nonzero()[0])]
            raise ValueError(f"the views of clip id {bad!r} have different labels; views of one clip must agree")
        return y[first]

    return tree_map(mean, scores), tree_map(first_label, labels)


class TaskConfig(BaseModel):
    """Keys under ``task:`` that every task has."""

    model_config = ConfigDict(extra="forbid")

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the loss's targets (MBT: 0.3)")
    per_modality_loss: bool = Field(
        True,
        description="with per-modality embeddings, train each modality's logits (MBT); False: the loss of their mean",
    )

    def method_segments(self) -> int:
        """S when the method is to run on each of a clip's S segments and return (B, S, D) embeddings
        (``harness.api.segments``); 0: on whole clips (the default)."""
        return 0


class Task(nn.Module):
    """The base of every task: per-modality read-out, soft targets and split-level evaluation.

    A subclass builds its head(s) in ``__init__`` and implements :meth:`head_logits`, :meth:`example_loss`,
    :meth:`soft_targets` and :meth:`metrics`.

    Args:
        cfg: the task's config.
        num_classes: C of the dataset (``InputSpec.num_classes``).
        embed_dim: D of the method's embeddings.
    """

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    # The metric (a key of :meth:`metrics`) that reports sort and compare by: test/<primary_metric>.
    primary_metric: ClassVar[str] = "top1"
    # Whether a clip's loss has one term per class (a sigmoid loss), which ``train.loss_reduction`` averages or sums
    # (:meth:`reduce_classes`); the config refuses ``loss_reduction: sum`` for a task without such terms.
    per_class_loss: ClassVar[bool] = False
    # ``train.loss_reduction``, set by ``harness.run.trial.build_model``; "mean" for a task built on its own.
    loss_reduction: str = "mean"

    def __init__(self, cfg: TaskConfig, num_classes: int, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

    def bind(self, method: nn.Module) -> None:
        """Called once with the built method, right after the task (``harness.run.trial.build_model``): a task over
        token outputs (``segmentation``) builds its head on ``method.token_layout()`` here; a task that needs more than
        the method's outputs (``av_pretrain``: its token sequences, ``harness.api.TokenSequences``) keeps it. Default:
        nothing.

        Raises:
            ValueError: the method cannot feed this task (e.g. no token outputs).
        """

    # -- what a task defines -----------------------------------------------------------------------------------

    def head_logits(self, embedding: Tensor) -> Tree:
        """Logits of one embedding tensor."""
        raise NotImplementedError

    def example_loss(self, logits: Tree, target: Tree) -> Tensor:
        """(B,) loss of each clip against hard labels or soft targets, label smoothing included."""
        raise NotImplementedError

    def soft_targets(self, label: Tree) -> Tree:
        """Hard labels as float targets with a class axis (one-hot); what mixup mixes."""
        raise NotImplementedError

    def metrics(self, scores: Tree, labels: Tree) -> dict[str, float]:
        """The task's metrics (in %) over one split, from per-clip ``scores`` (views already averaged)."""
        raise NotImplementedError

    def reduce_classes(self, loss: Tensor) -> Tensor:
        """Per-class loss terms (..., C) -> (...): their mean, or their sum with ``loss_reduction == "sum"``."""
        return loss.sum(-1) if self.loss_reduction == "sum" else loss.mean(-1)

    def scores(self, out: dict, batch: dict | None = None) -> Tree:
        """Per-clip scores that evaluation averages over views: the logits (``multilabel``: probabilities)."""
        return self.logits(out, batch)

    # -- shared ------------------------------------------------------------------------------------------------

    def _per_modality(self, out: dict, batch: dict | None) -> tuple[dict[str, Tree], dict[str, Tensor]] | None:
        """``({m: logits}, {m: (B,) present})``, or None for a method without per-modality embeddings."""
        per = out.get("per_modality")
        if not per:
            return None
        logits = {m: self.head_logits(e) for m, e in per.items()}
        if batch is None:  # no masks given: every modality present
            return logits, {m: torch.ones(e.shape[0], dtype=torch.bool, device=e.device) for m, e in per.items()}
        return logits, present_masks(batch, tuple(per))

    def logits(self, out: dict, batch: dict | None = None) -> Tree:
        """The mean of the present modalities' logits, or the head of ``embedding``."""
        per = self._per_modality(out, batch)
        if per is None:
            return self.head_logits(out["embedding"])
        logits, present = per
        heads = next(iter(logits.values()))
        if isinstance(heads, dict):  # one mean per head
            return {h: mean_over_modalities({m: z[h] for m, z in logits.items()}, present) for h in heads}
        return mean_over_modalities(logits, present)

    def loss(self, out: dict, batch: dict) -> Tensor:
        """Scalar training loss; per-modality logits each against ``label:<m>`` when the batch has it."""
        per = self._per_modality(out, batch) if self.cfg.per_modality_loss else None
        if per is None:
            return self.example_loss(self.logits(out, batch), batch["label"]).mean()
        logits, present = per
        losses = {m: self.example_loss(z, batch.get(f"label:{m}", batch["label"])) for m, z in logits.items()}
        return mean_over_modalities(losses, present).mean()

    @torch.no_grad()
    def summarize(self, scores: list[Tree], labels: list[Tree], ids: list[str]) -> dict[str, float]:
        """Metrics of a split from its batches' scores and labels: views of one ``id`` averaged first."""
        cat = lambda parts: tree_map(lambda *p: torch.cat(p), *parts)  # noqa: E731
        return self.metrics(*average_views(cat(scores), cat(labels), ids))
