"""``segmentation`` (AVSBench S4 / MS3): a binary mask of the sounding object(s) per frame; mIoU (Jaccard) and F-score.

The head is a mask decoder over the method's video tokens (:class:`MaskDecoder`): the method must return
token outputs (``FusionMethod.token_outputs``) with video. Labels are (B, T_l, H_l, W_l) masks in {0, 1} (255: not
annotated, left out of the loss and the metrics, as AVSBench S4's train split annotates only a video's first frame);
label frame j is decoded from token time step ``j * T // T_l`` and the logits are resized to the label's size.

Loss (``loss``): per-pixel BCE on the logits, the mean over a clip's annotated pixels (AVSBench's S4 loss,
``F.binary_cross_entropy`` on the sigmoid); ``bce_dice`` / ``bce_iou`` add ``aux_weight`` times the soft Dice or soft
IoU (Jaccard) loss, ``1 - (2 Σpy + 1) / (Σp + Σy + 1)`` / ``1 - (Σpy + 1) / (Σp + Σy - Σpy + 1)`` per frame.

Metrics, in percent, as AVSBench computes and averages them (OpenNLPLab/AVSBench ``avs_scripts/avs_s4/utils/
utility.py``: ``mask_iou``, ``Eval_Fmeasure``; ``test.py`` runs them on one video per batch and averages over videos):
- ``miou``: per frame, the IoU of ``sigmoid(logit) > 0.5`` with the mask; a frame whose mask is empty scores the
  pixels both leave empty over all pixels; ``eps = 1e-7`` in the denominator. A video's mean over its frames, then
  the mean over videos.
- ``fscore``: per video, over its frames with a non-empty mask, the precision and recall of ``sigmoid(logit) >= θ``
  at 255 thresholds θ = linspace(0, 1 - 1e-10, 255) (1e-20 in both denominators), F_β = (1 + β²) P R / (β² P + R)
  with β² = 0.3 (NaN -> 0), averaged over those frames, its maximum over θ; a video without such a frame scores 0
  (the code's zero-initialised score). The mean over videos.

Decoder (:class:`MaskDecoder`): a light FPN over the method's video token grids, then progressive upsampling.
LAVISH's AVS model (GenjiB/LAVISH ``AVS/avs_scripts/avs_s4/model/PVT_AVSModel.py``, ``Pred_endecoder``) feeds the
frozen Swin-V2's four stage maps (the last after the final norm), each through a Linear, into AVSBench's decoder
(OpenNLPLab/AVSBench ``avs_scripts/avs_s4/model/``): per stage a sum of dilated 3x3 convolutions, then top-down
fusion blocks (residual convolution units, x2 bilinear upsampling) and output convolutions to one channel. This
decoder keeps that shape, lighter, over whatever grids the method returns: a hierarchical backbone's stage maps
(``stages``, the last replaced by the normed final ``tokens``, as LAVISH) or, for a plain ViT, the one grid of its
final ``tokens`` (then it is SETR-PUP's progressive upsampling). It reads the video tokens only: what the mask owes
to the audio must come through the method's fusion, which is what the task compares. Known differences: no TPAVI
(AVSBench's audio-visual attention inside the decoder: fusion in the head), one 1x1 lateral convolution per grid
instead of the dilated-convolution sum and the Linear, one 3x3 convolution + GroupNorm + ReLU per fusion and per x2
upsampling step instead of the residual units.

Shapes: ``B`` clips, ``N`` clips of a split, ``T`` token time steps, ``T_l`` labelled frames, ``H x W`` mask size,
``h x w`` a token grid, ``C_s`` its width, ``C`` the decoder's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import present_masks
from harness.api.task import Task, TaskConfig

IGNORE = 255  # a mask value for "not annotated"
BETA2 = 0.3  # AVSBench's F-measure weight
THRESHOLDS = 255  # AVSBench's pr_num


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm (up to 8 groups), ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out), nn.ReLU())


class MaskDecoder(nn.Module):
    """Grids ``[(B, T, h_s·w_s, C_s)]``, finest first -> mask logits (B, T, H, W).

    Args:
        grids: ``(h_s, w_s, C_s)`` of every input grid, finest first.
        width: C, the decoder's channels.
        out_size: (H, W) of the logits; the finest grid is doubled ``ceil(log2(H / h_0))`` times, then resized.
    """

    def __init__(self, grids: list[tuple[int, int, int]], width: int, out_size: tuple[int, int]):
        super().__init__()
        self.grids = grids
        self.out_size = out_size
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for _, _, c in grids)
        self.smooth = nn.ModuleList(conv_block(width, width) for _ in grids)
        steps = max(0, math.ceil(math.log2(max(out_size[0] / grids[0][0], out_size[1] / grids[0][1]))))
        self.up = nn.ModuleList(conv_block(width if i == 0 else max(width // 2**i, 8), max(width // 2 ** (i + 1), 8))
                                for i in range(steps))  # fmt: skip
        self.out = nn.Conv2d(max(width // 2**steps, 8) if steps else width, 1, 1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        b, t = maps[0].shape[:2]
        x = None
        for s in reversed(range(len(maps))):  # coarsest first: top-down, upsample and add
            h, w, c = self.grids[s]
            y = self.lateral[s](maps[s].reshape(b * t, h, w, c).permute(0, 3, 1, 2))  # (B·T, C, h, w)
            if x is not None:
                y = y + F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = self.smooth[s](y)
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.out(x)  # (B·T, 1, h', w')
        if tuple(x.shape[-2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x.view(b, t, *self.out_size)  # (B, T, H, W)


class SegmentationConfig(TaskConfig):
    """Keys under ``task:`` for ``segmentation``."""

    decoder_width: int = Field(32, ge=8, description="C, channels of the mask decoder (AVSBench's decoder: 256)")
    loss: Literal["bce", "bce_dice", "bce_iou"] = Field(
        "bce", description="bce: per-pixel BCE (AVSBench S4); bce_dice / bce_iou: plus the soft Dice / IoU loss"
    )
    aux_weight: float = Field(1.0, ge=0, description="weight of the Dice / IoU term of loss=bce_dice|bce_iou")
    stages: bool = Field(
        True,
        description="decode a hierarchical backbone's stage maps (an FPN, LAVISH's AVS); false: the final tokens only",
    )


def mask_iou(logits: Tensor, masks: Tensor, eps: float = 1e-7) -> Tensor:
    """(F,) AVSBench's IoU of each frame: ``logits`` (F, H, W) thresholded at sigmoid 0.5 against ``masks`` {0, 1}."""
    pred = (logits.float().sigmoid() > 0.5).float()
    y = masks.float()
    inter, union = (pred * y).sum((1, 2)), torch.maximum(pred, y).sum((1, 2))
    empty = y.sum((1, 2)) == 0
    inter = torch.where(empty, ((1 - pred) * (1 - y)).sum((1, 2)), inter)
    union = torch.where(empty, torch.full_like(union, y[0].numel()), union)
    return inter / (union + eps)


def f_curves(logits: Tensor, masks: Tensor) -> Tensor:
    """(F, 255) AVSBench's F_β of each frame at each threshold θ_k (``prob >= θ_k``), in float64.

    Exact without a (F, H, W, 255) tensor: a pixel is predicted at θ_k iff k < (number of θ <= prob), so per frame the
    predicted and true-positive counts at every θ are reversed cumulative sums of a histogram of that number.
    """
    prob = logits.float().sigmoid().flatten(1)  # (F, HW)
    y = masks.flatten(1).double()
    theta = torch.linspace(0, 1 - 1e-10, THRESHOLDS)  # float32, as the reference compares float32 probabilities
    rank = torch.bucketize(prob, theta, right=True)  # (F, HW): θ_k <= prob for k < rank
    hist = torch.zeros(prob.shape[0], THRESHOLDS + 1, dtype=torch.float64)
    pos = hist.scatter_add(1, rank, torch.ones_like(y)).flip(1).cumsum(1).flip(1)[:, 1:]  # (F, 255): #(rank > k)
    tp = hist.scatter_add(1, rank, y).flip(1).cumsum(1).flip(1)[:, 1:]
    precision, recall = tp / (pos + 1e-20), tp / (y.sum(1, keepdim=True) + 1e-20)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


def video_fscore(logits: Tensor, masks: Tensor) -> float:
    """AVSBench's ``Eval_Fmeasure`` of one video (its frames (F, H, W)): max over θ of the mean F over frames with a
    non-empty mask; 0 when there is none."""
    keep = masks.flatten(1).float().mean(1) != 0
    if not keep.any():
        return 0.0
    return f_curves(logits[keep], masks[keep]).mean(0).max().item()


class SegmentationTask(Task):
    """Mask of the sounding object(s) per frame from the method's video tokens; BCE; mIoU and F-score."""

    Config = SegmentationConfig
    primary_metric = "miou"
    token_modalities = ("video",)  # the config refuses a method without video token outputs (harness.config.run)

    def __init__(self, cfg: SegmentationConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        self.decoder: MaskDecoder | None = None

    def bind(self, method: nn.Module) -> None:
        """Builds the decoder on the method's video grids (``token_layout``) at the frames' size."""
        name = getattr(method.cfg, "name", type(method).__name__)
        if not getattr(method, "token_outputs", False):
            raise ValueError(f"task segmentation decodes a method's token outputs; method {name!r} has none "
                             "(token_outputs = False)")  # fmt: skip
        layout = method.token_layout()
        if layout.video is None:
            raise ValueError(f"task segmentation decodes video tokens; method {name!r} consumes no video "
                             "(e.g. audio_only); use a method with video")  # fmt: skip
        self.use_stages = bool(self.cfg.stages and layout.stages)
        shapes = [s.video for s in layout.stages] if self.use_stages else [layout.video]
        self.decoder = MaskDecoder([(h, w, c) for _, h, w, c in shapes], self.cfg.decoder_width,
                                   (method.spec.image_size, method.spec.image_size))  # fmt: skip

    def logits(self, out: dict, batch: dict | None = None) -> Tensor:
        """(B, T, H, W) mask logits; a clip without video (its tokens are 0) is decoded from zeros like any other."""
        if self.decoder is None:
            raise RuntimeError("SegmentationTask.bind(method) builds the decoder; call it before the first forward")
        if self.use_stages:
            maps = [s["video"] for s in out["stages"][:-1]] + [out["tokens"]["video"]]  # the last normed, as LAVISH
        else:
            maps = [out["tokens"]["video"]]
        if batch is not None:  # the tokens of an absent video are 0 already; masked again for a plug-in's sake
            keep = present_masks(batch, ("video",))["video"].view(-1, 1, 1, 1)
            maps = [torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in maps]
        return self.decoder(maps)

    def at_labels(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits (B, T, H, W) at the labels' frames and size (B, T_l, H_l, W_l)."""
        t, t_l = logits.shape[1], target.shape[1]
        if t != t_l:
            logits = logits[:, torch.arange(t_l, device=logits.device) * t // t_l]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def loss(self, out: dict, batch: dict) -> Tensor:
        return self.example_loss(self.logits(out, batch), batch["label"]).mean()

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.to(logits.device)
        z = self.at_labels(logits, target).float()
        valid = (target != IGNORE).float()  # (B, T_l, H, W)
        y = torch.where(target == IGNORE, 0, target).float()
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = (bce * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp(min=1)  # (B,)
        if self.cfg.loss != "bce":
            p, frames = z.sigmoid() * valid, valid.amax((2, 3))  # (B, T_l, H, W), (B, T_l) annotated frames
            inter, total = (p * y).sum((2, 3)), p.sum((2, 3)) + y.sum((2, 3))
            if self.cfg.loss == "bce_dice":
                aux = 1 - (2 * inter + 1) / (total + 1)
            else:
                aux = 1 - (inter + 1) / (total - inter + 1)
            loss = loss + self.cfg.aux_weight * (aux * frames).sum(1) / frames.sum(1).clamp(min=1)
        return loss

    def soft_targets(self, label: Tensor) -> Tensor:
        return label.float()  # masks are their own soft targets (mixup mixes them; 255 stays out of a mixed batch)

    def scores(self, out: dict, batch: dict | None = None) -> Tensor:
        """Logits at the labels' frames and size, so that the split's scores and labels line up."""
        logits = self.logits(out, batch)
        return self.at_labels(logits, batch["label"]) if batch is not None else logits

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        """mIoU and F-score in percent over the split's videos (each clip one video), AVSBench's averaging."""
        labels = labels.to(scores.device)
        ious, fs = [], []
        for z, y in zip(scores, labels):  # one video: (T_l, H, W)
            keep = (y != IGNORE).flatten(1).all(1)  # its annotated frames
            if not keep.any():
                continue
            ious.append(mask_iou(z[keep], y[keep]).mean())
            fs.append(video_fscore(z[keep], y[keep]))
        if not ious:
            return {"miou": float("nan"), "fscore": float("nan")}
        return {"miou": 100.0 * torch.stack(ious).mean().item(), "fscore": 100.0 * sum(fs) / len(fs)}
