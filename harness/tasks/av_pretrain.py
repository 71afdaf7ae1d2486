"""``av_pretrain``: AVBERT's self-supervised objectives, masked embedding prediction (MEP) and correct pair
prediction (CPP), with random or content-aware negative sampling (CANS). Labels are never read.

Paper: Lee, Yu, Kim, Breuel, Kautz, Song, "Parameter Efficient Multimodal Transformers for Video Representation
Learning", ICLR 2021, https://arxiv.org/abs/2012.04124. The official code (sangho-vision/avbert) releases downstream
fine-tuning only, no pretraining code, so everything below follows the paper's description; the choices it leaves
open are options, and the ones made here are marked (assumed).

Per training batch, on the front ends' clip embeddings c_m (B, K, D) of the method's forward (``out["front_tokens"]``,
``harness.api.TokenSequences``; the CNN runs once):
- CPP pairs: a fraction ``cpp_negatives`` of the clips get the audio sequence of another clip of the mini-batch,
  drawn by the sampling rule below; the CPP head, a linear map of the last stream's [BOS_video ‖ BOS_audio], says
  whether the pair is the original one (binary cross-entropy).
- MEP: ``max(1, round(mask_ratio · K))`` clip positions per sequence and modality are replaced by a learned mask
  embedding (BERT's [MASK]); each stream's output at a masked position (unimodal and multimodal transformers, as
  the paper's visual, audio and multimodal MEP), through a linear head, scores the true embedding of that position
  against the K embeddings of each of ``negatives`` other clips (same modality) by cosine similarity / ``temperature``
  (assumed); InfoNCE = cross-entropy with the true one at index 0.
- Negatives (MEP's clips and CPP's partner) come from the mini-batch: ``random`` (uniform over the other clips),
  or CANS by similarity in the CNN embedding space: ``similar`` (the paper's choice: harder negatives) draws clip j
  for clip i with probability softmax_j(s_ij / cans_temperature), ``dissimilar`` with softmax_j(-s_ij / τ), where
  s_ij is the cosine similarity of the clips' descriptors [mean_k ĉ_video ‖ mean_k ĉ_audio] (ĉ: unit-length
  embeddings; detached) and j ≠ i. The softmax form and the descriptor are assumed.
Loss = ``mep_weight`` · MEP + ``cpp_weight`` · CPP. Evaluation draws masks and pairs from a generator seeded by the
batch's clip ids, so a split's figures are repeatable: ``mep_acc`` (the true embedding ranked first, %), ``cpp_acc``
(%), ``mep_loss``, ``cpp_loss``, ``loss``.

Shapes: ``B`` clips, ``K`` short clips per sample, ``D`` width, ``n`` negative clips per row.
"""

from __future__ import annotations

import zlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import TokenSequences, present_masks
from harness.api.task import Task, TaskConfig

ORDER = ("video", "audio")
Sampling = Literal["random", "similar", "dissimilar"]


class AVPretrainConfig(TaskConfig):
    """Keys under ``task:`` for ``av_pretrain``."""

    mep_weight: float = Field(1.0, ge=0, description="weight of masked embedding prediction in the loss")
    cpp_weight: float = Field(1.0, ge=0, description="weight of correct pair prediction in the loss")
    mask_ratio: float = Field(0.15, gt=0, lt=1, description="fraction of clip positions masked per sequence and "
                              "modality (at least one: max(1, round(ratio K)))")  # fmt: skip
    negatives: int = Field(8, ge=1, description="other clips of the mini-batch whose K embeddings are MEP negatives")
    negative_sampling: Sampling = Field(
        "similar",
        description="random: uniform over the other clips of the mini-batch; similar (CANS, the paper's): more likely "
        "the more similar in the CNN embedding space; dissimilar: the less similar",
    )
    cans_temperature: float = Field(0.1, gt=0, description="τ of CANS's softmax over cosine similarities")
    temperature: float = Field(0.1, gt=0, description="τ of MEP's InfoNCE over cosine similarities")
    cpp_negatives: float = Field(0.5, ge=0, le=1, description="fraction of clips whose audio is another clip's (CPP)")
    detach_targets: bool = Field(False, description="MEP targets without gradient (False: the CNNs learn from them)")


def info_nce(pred: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """(N,) InfoNCE of each prediction: -log softmax over [positive, negatives] of cosine similarity / τ, at 0.

    Args:
        pred: (N, D) predictions; positive: (N, D) true embeddings; negatives: (N, n, D).
    """
    p = F.normalize(pred, dim=-1)
    pos = (p * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)  # (N, 1)
    neg = torch.einsum("nd,njd->nj", p, F.normalize(negatives, dim=-1))  # (N, n)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(p), dtype=torch.long, device=p.device), reduction="none")


def cpp_loss(logit: Tensor, same: Tensor) -> Tensor:
    """(B,) binary cross-entropy of the pair logits (B,) against ``same`` (B,) bool (the original pair)."""
    return F.binary_cross_entropy_with_logits(logit, same.to(logit.dtype), reduction="none")


def descriptors(tokens: dict[str, Tensor]) -> Tensor:
    """(B, 2D) unit-length clip descriptors [mean_k ĉ_video ‖ mean_k ĉ_audio] of clip embeddings (B, K, D)."""
    parts = [F.normalize(tokens[m].detach().float(), dim=-1).mean(1) for m in ORDER]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)


def negative_probabilities(desc: Tensor, rule: Sampling, temperature: float) -> Tensor:
    """(B, B) row i: the probability of drawing clip j as a negative of clip i (0 on the diagonal)."""
    b = len(desc)
    eye = torch.eye(b, dtype=torch.bool, device=desc.device)
    if rule == "random":
        scores = torch.zeros(b, b, device=desc.device)
    else:
        sim = desc @ desc.T  # (B, B) cosine similarities
        scores = (sim if rule == "similar" else -sim) / temperature
    return scores.masked_fill(eye, float("-inf")).softmax(dim=1)


def draw_negatives(probs: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, n) distinct clip indices per row, drawn without replacement from ``probs`` (B, B)."""
    return torch.multinomial(probs, min(n, len(probs) - 1), replacement=False, generator=generator)


def draw_masks(b: int, k: int, ratio: float, device, generator: torch.Generator | None = None) -> Tensor:
    """(B, K) bool: ``max(1, round(ratio K))`` random positions of each row."""
    count = max(1, round(ratio * k))
    order = torch.rand(b, k, device=device, generator=generator).argsort(dim=1)
    return order < count  # a uniform random subset of ``count`` positions per row


class AVPretrainTask(Task):
    """MEP + CPP over a :class:`harness.api.TokenSequences` method's clip sequences (``methods/lowrank.py``)."""

    Config = AVPretrainConfig
    primary_metric = "mep_acc"

    def __init__(self, cfg: AVPretrainConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        d = embed_dim
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in ORDER})
        self.mep_head = nn.ModuleDict({f"{s}_{m}": nn.Linear(d, d) for s in ("unimodal", "multimodal") for m in ORDER})
        self.cpp_head = nn.Linear(2 * d, 1)
        self.__dict__["_method"] = None  # the bound method, kept out of this module's parameters and state

    def bind(self, method: nn.Module) -> None:
        if not isinstance(method, TokenSequences):
            raise TypeError(f"task av_pretrain needs a method with encode_tokens (harness.api.TokenSequences); "
                            f"{type(method).__name__} has none: use method.name: lowrank")  # fmt: skip
        self.__dict__["_method"] = method

    # -- the objectives ---------------------------------------------------------------------------------------

    def objectives(self, out: dict, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-clip (B,) ``mep_loss``, ``mep_acc`` (fraction of masked positions ranked first), ``cpp_loss``,
        ``cpp_acc``; NaN where a clip has nothing to score (a modality absent)."""
        cfg: AVPretrainConfig = self.cfg
        method = self.__dict__["_method"]
        if method is None:
            raise RuntimeError("av_pretrain: bind(method) was not called (harness.run.trial.build_model does)")
        tokens = out["front_tokens"]  # m -> (B, K, D)
        present = present_masks(batch, ORDER)
        b, k, _ = tokens["video"].shape
        dev = tokens["video"].device
        nan = torch.full((b,), float("nan"), device=dev)
        if b < 2:  # a lone clip (an evaluation split's last batch) has no other clip to pair or contrast with
            return {"mep_loss": nan, "mep_acc": nan, "cpp_loss": nan, "cpp_acc": nan}
        probs = negative_probabilities(descriptors(tokens), cfg.negative_sampling, cfg.cans_temperature)
        swap = torch.rand(b, device=dev, generator=generator) < cfg.cpp_negatives  # (B,)
        partner = draw_negatives(probs, 1, generator)[:, 0]  # (B,) the CPP negative's audio donor
        seq = {"video": tokens["video"], "audio": torch.where(swap[:, None, None], tokens["audio"][partner],
                                                               tokens["audio"])}  # fmt: skip
        seq_present = {"video": present["video"], "audio": torch.where(swap, present["audio"][partner],
                                                                       present["audio"])}  # fmt: skip
        masks = {m: draw_masks(b, k, cfg.mask_ratio, dev, generator) & seq_present[m][:, None] for m in ORDER}
        inputs = {m: torch.where(masks[m][..., None], self.mask_token[m].to(seq[m].dtype), seq[m]) for m in ORDER}
        streams = method.encode_tokens(inputs, seq_present)
        negatives = draw_negatives(probs, cfg.negatives, generator)  # (B, n) clips
        mep_loss, mep_hit, count = torch.zeros(b, device=dev), torch.zeros(b, device=dev), torch.zeros(b, device=dev)
        for stream, outs in streams.items():
            for m, h in outs.items():
                target = seq[m].detach() if cfg.detach_targets else seq[m]  # (B, K, D)
                # Every position is scored and the masked ones kept: no nonzero(), whose size is data-dependent (a
                # host sync on a GPU, and not countable on the meta device).
                pred = self.mep_head[f"{stream}_{m}"](h[:, 1:])  # (B, K, D): outputs after the BOS
                neg = target[negatives].flatten(1, 2)  # (B, n K, D): the negatives' clip embeddings
                per = neg[:, None].expand(-1, k, -1, -1).flatten(0, 1)  # (B K, n K, D)
                loss = info_nce(pred.flatten(0, 1), target.flatten(0, 1), per, cfg.temperature).view(b, k)
                with torch.no_grad():
                    p = F.normalize(pred, dim=-1)
                    pos = (p * F.normalize(target, dim=-1)).sum(-1)  # (B, K)
                    hit = (pos > torch.einsum("bkd,bjd->bkj", p, F.normalize(neg, dim=-1)).amax(-1)).float()
                w = masks[m]  # (B, K) bool
                mep_loss = mep_loss + torch.where(w, loss, 0.0).sum(1)
                mep_hit = mep_hit + torch.where(w, hit, 0.0).sum(1)
                count = count + w.sum(1)
        last = streams["multimodal"] or streams["unimodal"]
        logit = self.cpp_head(torch.cat([last[m][:, 0] for m in ORDER], dim=-1))[:, 0]  # (B,)
        same = ~swap
        both = seq_present["video"] & seq_present["audio"]
        return {
            "mep_loss": torch.where(count > 0, mep_loss / count.clamp(min=1), nan),
            "mep_acc": torch.where(count > 0, mep_hit / count.clamp(min=1), nan),
            "cpp_loss": torch.where(both, cpp_loss(logit, same), nan),
            "cpp_acc": torch.where(both, ((logit > 0) == same).float(), nan),
        }

    def loss(self, out: dict, batch: dict) -> Tensor:
        o = self.objectives(out, batch)
        return self.cfg.mep_weight * _nanmean(o["mep_loss"]) + self.cfg.cpp_weight * _nanmean(o["cpp_loss"])

    @torch.no_grad()
    def scores(self, out: dict, batch: dict | None = None) -> Tensor:
        """(B, 4) per clip: mep_loss, mep_acc, cpp_loss, cpp_acc, with masks and pairs seeded by the clip ids."""
        dev = out["front_tokens"]["video"].device
        g = torch.Generator(device=dev).manual_seed(zlib.crc32("\n".join(batch["id"]).encode()))
        o = self.objectives(out, batch, g)
        return torch.stack([o["mep_loss"], o["mep_acc"], o["cpp_loss"], o["cpp_acc"]], dim=1)

    @torch.no_grad()
    def summarize(self, scores: list[Tensor], labels: list, ids: list[str]) -> dict[str, float]:
        return self.metrics(torch.cat(scores), None)  # unlabelled: the labels the engine collects are not read

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels=None) -> dict[str, float]:
        """Means over the clips that had something to score; an objective with none (``:audio_only``: no pairs)
        is left out."""
        out, loss = {}, 0.0
        for i, (name, scale) in enumerate((("mep_loss", 1), ("mep_acc", 100), ("cpp_loss", 1), ("cpp_acc", 100))):
            if (~torch.isnan(scores[:, i])).any():
                out[name] = scale * _nanmean(scores[:, i]).item()
        for name, weight in (("mep_loss", self.cfg.mep_weight), ("cpp_loss", self.cfg.cpp_weight)):
            loss += weight * out.get(name, 0.0)
        return {**out, "loss": loss}

    # -- the label hooks, which have nothing to do here ---------------------------------------------------------

    def logits(self, out: dict, batch: dict | None = None) -> Tensor:
        """CPP logit of the method's read-out (what ``harness profile`` counts): [CLS_video ‖ CLS_audio]."""
        per = out.get("per_modality") or {m: out["embedding"] for m in ORDER}
        return self.cpp_head(torch.cat([per[m] for m in ORDER], dim=-1))

    def soft_targets(self, label):
        raise ValueError("task av_pretrain reads no labels: train.mixup_alpha must be 0")


def _nanmean(x: Tensor) -> Tensor:
    ok = ~torch.isnan(x)
    return torch.where(ok, x, torch.zeros_like(x)).sum() / ok.sum().clamp(min=1)
