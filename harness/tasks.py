"""Tasks own the heads, the losses and the metrics, so that every method is scored by the same head.

| task | ``label`` of a batch | head | loss | metrics (all in %) |
| --- | --- | --- | --- | --- |
| ``classification`` | int64 (B,) | ``Linear(D, C)`` | softmax CE | ``top1``, ``top5`` |
| ``multilabel`` | float multi-hot (B, C) | ``Linear(D, C)`` | sigmoid BCE | ``map``, ``auc`` |
| ``localization`` | int64 (B, S) | ``Linear(D, C)`` per segment | CE per segment | ``seg_acc`` |
| ``multihead`` | ``{"verb": (B,), "noun": (B,)}`` | one per head | mean of CEs | ``verb_top1``, ``action_top1`` |

Shared by every task (:class:`Task`):

- **Per-modality read-out** (MBT's ``classifier='token'``, a method returning ``per_modality``): the same head scores
  each modality's embedding; training averages the per-modality losses over the modalities present in each clip,
  each against its own target ``label:<m>`` where modality-mixup made one (scenic ``label[modality]``); evaluation
  averages the per-modality logits over the present modalities (MBT §3.3, scenic ``MBT.__call__``).
- **Soft targets**: every loss takes the hard labels above or float targets of the same layout with a class axis
  (mixup, :mod:`harness.augment`); :meth:`Task.soft_targets` turns hard labels into one-hot ones.
- **Evaluation** (:meth:`Task.summarize`): per-clip ``scores`` of every batch are concatenated, the views of one clip
  (equal ``id``; multi-clip testing) are averaged, then :meth:`Task.metrics` runs once over the whole split. The
  softmax tasks average logits, as scenic's ``test_step`` does by default (MBT's multi-crop test; its multi-head model
  refuses softmaxed averaging); ``multilabel`` averages sigmoid probabilities, the quantity its metrics rank.

Shapes: ``B`` clips, ``N`` clips of a split, ``C`` classes, ``S`` segments, ``D`` embedding width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from methods.base import mean_over_modalities, present_masks

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


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N, min(k, C)) bool: whether the j-th best class of each row is its label."""
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices == labels[..., None]


class TaskConfig(BaseModel):
    """Keys under ``task:`` that every task has."""

    model_config = ConfigDict(extra="forbid")

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the loss's targets (MBT: 0.3)")
    per_modality_loss: bool = Field(
        True,
        description="with per-modality embeddings, train each modality's logits (MBT); False: the loss of their mean",
    )


class Task(nn.Module):
    """The base of every task: per-modality read-out, soft targets and split-level evaluation.

    A subclass builds its head(s) in ``__init__`` and implements :meth:`head_logits`, :meth:`example_loss`,
    :meth:`soft_targets` and :meth:`metrics`.

    Args:
        cfg: the task's config.
        num_classes: C of the dataset (``InputSpec.num_classes``).
        embed_dim: D of the method's embeddings.
    """

    Config: type[TaskConfig] = TaskConfig
    metric_names: tuple[str, ...] = ()

    def __init__(self, cfg: TaskConfig, num_classes: int, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

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


def _target_like(y: Tensor, z: Tensor) -> Tensor:
    """``y`` on ``z``'s device; float targets also in ``z``'s dtype (bf16 under DeepSpeed)."""
    return y.to(z.device, z.dtype if y.is_floating_point() else None)


def _smooth(y: Tensor, ls: float) -> Tensor:
    """scenic's ``apply_label_smoothing``: ``y (1 - ls) + ls / C`` over the last axis."""
    return y * (1 - ls) + ls / y.shape[-1] if ls else y


class ClassificationConfig(TaskConfig):
    """Keys under ``task:`` for ``classification``."""


class ClassificationTask(Task):
    """Single-label classification over C classes with one head shared by every method."""

    Config = ClassificationConfig
    metric_names = ("top1", "top5")

    def __init__(self, cfg: ClassificationConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        # PyTorch's default init. scenic zero-initialises its ``output_projection``; on the synthetic default that
        # stalled every fusion method at the late-fusion plateau (measured: vanilla 18 % vs 56 % top-1).
        self.head = nn.Linear(embed_dim, num_classes)

    def head_logits(self, embedding: Tensor) -> Tensor:
        return self.head(embedding)  # (B, C)

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        # integer (B,) or soft (B, C) targets; torch smooths either as (1 - ls) y + ls / C
        return F.cross_entropy(logits, _target_like(target, logits), label_smoothing=self.cfg.label_smoothing,
                               reduction="none")  # fmt: skip

    def soft_targets(self, label: Tensor) -> Tensor:
        return F.one_hot(label, self.num_classes).float()  # (B, C)

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """Top-1 and top-5 accuracy in percent."""
        hit = topk_hits(scores, labels, 5)
        return {"top1": 100.0 * hit[:, 0].float().mean().item(), "top5": 100.0 * hit.any(1).float().mean().item()}


# --- multilabel -------------------------------------------------------------------------------------------------


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
        "the sum scales the loss by C",
    )


class MultilabelTask(Task):
    """Multi-label classification (AudioSet): sigmoid BCE on multi-hot targets; mAP and AUC over classes."""

    Config = MultilabelConfig
    metric_names = ("map", "auc")

    def __init__(self, cfg: MultilabelConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def head_logits(self, embedding: Tensor) -> Tensor:
        return self.head(embedding)  # (B, C)

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        y = _smooth(target.to(logits.device, logits.dtype), self.cfg.label_smoothing)
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


# --- localization -----------------------------------------------------------------------------------------------


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
    metric_names = ("seg_acc",)

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
        y = _target_like(target, logits)
        y = y.flatten(0, 1) if y.is_floating_point() else y.reshape(-1)  # (B S, C) or (B S,)
        loss = F.cross_entropy(logits.reshape(-1, c), y, label_smoothing=self.cfg.label_smoothing, reduction="none")
        return loss.view(b, s).mean(1)

    def soft_targets(self, label: Tensor) -> Tensor:
        return F.one_hot(label, self.num_classes).float()  # (B, S, C)

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """Segment accuracy in percent: argmax = label over all segments of all clips."""
        return {"seg_acc": 100.0 * (scores.argmax(-1) == labels).float().mean().item()}


# --- multihead --------------------------------------------------------------------------------------------------


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
        names = [f"{h}_top{k}" for h in cfg.heads for k in (1, 5)]
        self.metric_names = tuple(names + (["action_top1", "action_top5"] if len(cfg.heads) > 1 else []))

    def head_logits(self, embedding: Tensor) -> dict[str, Tensor]:
        return {h: head(embedding) for h, head in self.heads.items()}  # h -> (B, C_h)

    def example_loss(self, logits: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        ls = self.cfg.label_smoothing
        losses = torch.stack([F.cross_entropy(z, _target_like(target[h], z), label_smoothing=ls, reduction="none")
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
