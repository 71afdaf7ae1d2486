"""Pieces two or more methods share: per-modality tokenisers and block stacks, MBT's read-outs, and
:class:`ViTStreams`, the base of the methods built on per-modality ViT streams (MBT, vanilla, cross, late, the
unimodal baselines), which also loads an image-ViT checkpoint into them MBT's way (``harness.models.weights``).

A plug-in method builds on these (they are public); ``methods/mbt.py`` is the model of how.

Shapes: ``B`` batch, ``N`` tokens of a sequence (CLS included), ``Nv`` / ``Na`` video / audio patch tokens, ``M``
modalities, ``D`` width, ``L`` depth.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from harness.api import (
    FusionMethod,
    InputSpec,
    MethodConfig,
    complete,
    mean_over_modalities,
    present_masks,
    stream_masks,
)
from harness.models.backbones import (
    AudioPatchEmbed,
    BackboneConfig,
    VideoPatchEmbed,
    cls_token,
    layer_norm,
    make_blocks,
    num_audio_tokens,
    num_video_tokens,
    pos_table,
    time_slots,
)
from harness.models.weights import ImageViT, LoadReport, Mapping, apply_mapping, image_vit, vit_mapping

Readout = Literal["cls", "gap"]


def readout_field() -> Any:
    """The ``readout`` config field shared by the token-fusion methods (MBT's two classifiers)."""
    return Field(
        "cls", description="cls: per-modality CLS (MBT's paper); gap: mean of present patch tokens (MBT's AS config)"
    )


def check_fusion_layer(value: int, depth: int, key: str = "method.fusion_layer") -> list[tuple[str, str]]:
    """The range check of a fusion layer Lf against the backbone depth L (0 = early fusion, L = late fusion)."""
    if 0 <= value <= depth:
        return []
    return [
        (
            key,
            f"{value} is out of range: must be in [0, {depth}] (0 = early fusion, {depth} = late fusion; "
            f"the backbone has depth {depth})",
        )
    ]


class Tokenizers(nn.Module):
    """Each modality's input -> ``[CLS ‖ patches + pos]`` (B, 1 + N_m, D).

    The positional table covers the patch tokens only and the CLS is prepended after it, as in MBT's
    ``temporal_encode`` followed by the ``cls`` concatenation.

    Args:
        backbone: patch sizes and width.
        spec: input shapes (fix the positional tables' lengths).
        modalities: which of ``("audio", "video")`` to build.
    """

    def __init__(self, backbone: BackboneConfig, spec: InputSpec, modalities: tuple[str, ...]):
        super().__init__()
        d = backbone.embed_dim
        make = {
            "video": (VideoPatchEmbed, num_video_tokens),
            "audio": (AudioPatchEmbed, num_audio_tokens),
        }
        self.patch = nn.ModuleDict({m: make[m][0](backbone) for m in modalities})
        self.pos = nn.ParameterDict({m: pos_table(make[m][1](backbone, spec), d) for m in modalities})
        self.cls = nn.ParameterDict({m: cls_token(d) for m in modalities})
        # Optional time table shared by the modalities (backbone.time_embed="shared"): co-occurring tokens get
        # the same code, so cross-modal attention can align them without learning two tables against each other.
        self.time = None
        if backbone.time_embed == "shared":
            video_slot, audio_slot, grid = time_slots(backbone, spec)
            self.time = nn.Parameter(torch.randn(grid, d) * backbone.time_embed_std)
            self.register_buffer("video_slot", video_slot, persistent=False)
            self.register_buffer("audio_slot", audio_slot, persistent=False)

    def forward(self, batch: dict, present: dict[str, Tensor], full: bool = False) -> dict[str, Tensor]:
        """``{m: (B, 1 + N_m, D)}``; ``full``: every clip has every modality (``harness.api.complete``)."""
        out = {}
        for m, embed in self.patch.items():
            x = batch[m]
            # An absent clip may carry any placeholder (even NaN); masked keys still multiply their values by 0,
            # so the input is replaced, not scaled.
            if not full:
                keep = present[m].reshape((-1,) + (1,) * (x.dim() - 1))
                x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
            tokens = embed(x) + self.pos[m]  # (B, N_m, D)
            if self.time is not None:
                tokens = tokens + self.time[getattr(self, f"{m}_slot")]  # (N_m, D) broadcast over B
            cls = self.cls[m].expand(tokens.shape[0], -1, -1)  # (B, 1, D)
            out[m] = torch.cat([cls, tokens], dim=1)  # (B, 1 + N_m, D)
        return out


class Streams(nn.Module):
    """``L`` blocks per modality, or one stack used by every modality when ``shared_weights``.

    Args:
        backbone: width, depth, heads, stochastic depth.
        modalities: the streams.
        shared_weights: one stack for all modalities (MBT's ``share_encoder=True``).
    """

    def __init__(self, backbone: BackboneConfig, modalities: tuple[str, ...], shared_weights: bool = False):
        super().__init__()
        self.shared_weights = shared_weights
        names = ("shared",) if shared_weights else modalities
        self.blocks = nn.ModuleDict({n: make_blocks(backbone, backbone.depth) for n in names})

    def block(self, layer: int, modality: str | None = None) -> nn.Module:
        """The block of ``modality`` at ``layer``; ``modality`` may be None when weights are shared."""
        return self.blocks["shared" if self.shared_weights else modality][layer]

    def forward(self, z: dict[str, Tensor], masks: dict[str, Tensor | None], layers: range) -> dict[str, Tensor]:
        """Runs each modality through its own blocks, z_m <- Block_m(z_m), for ``layers``.

        Args:
            z: ``{modality: (B, N_m, D)}``.
            masks: ``{modality: (B, 1, 1, N_m)}`` bool key masks, None where every key is present.
            layers: the layer indices to run.
        """
        z = dict(z)
        for layer in layers:
            for m in z:
                z[m] = self.block(layer, m)(z[m], attn_mask=masks[m])
        return z


def readout_cls(z: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
    """MBT's ``classifier='token'``: each modality's CLS after the final norm, averaged over present modalities.

    Args:
        z: ``{modality: (B, 1 + N_m, D)}`` after the shared final LayerNorm.
        present: ``{modality: (B,) bool}``.
    """
    cls = {m: x[:, 0] for m, x in z.items()}  # m -> (B, D)
    return {"embedding": mean_over_modalities(cls, present), "per_modality": cls}


def readout_gap(z: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
    """MBT's ``classifier='gap'``: mean over every patch token of the present modalities (CLS excluded).

    Tokens are pooled jointly, so a modality weighs by its token count, as in MBT. A clip with no modality
    present pools the CLS tokens instead, which keeps the embedding finite.
    """
    tokens = torch.cat(list(z.values()), dim=1)  # (B, N, D)
    is_cls = torch.cat([torch.arange(x.shape[1], device=tokens.device) == 0 for x in z.values()])  # (N,)
    patch = torch.cat([present[m][:, None].expand(-1, x.shape[1]) for m, x in z.items()], dim=1) & ~is_cls
    none = ~patch.any(1, keepdim=True)  # (B, 1)
    w = torch.where(none, is_cls.expand_as(patch), patch).float()  # (B, N)
    return {"embedding": (w[..., None] * tokens).sum(1) / w.sum(1, keepdim=True)}


class ViTStreams(FusionMethod):
    """A method on per-modality ViT streams: ``tokens`` (:class:`Tokenizers`), ``streams`` (:class:`Streams`) and
    one final ``norm``, built in that order; what it does with them is the subclass's ``forward``.

    ``load_backbone`` fills them from an image ViT MBT's way: block l of the checkpoint into block l of every stream
    (or the one shared stack), the tokenisers' kernels and positional tables resized (``harness.models.weights``).

    Args:
        cfg, backbone, spec: as :class:`harness.api.FusionMethod`.
        shared_weights: one block stack for every modality (MBT's ``share_encoder=True``).
    """

    # The order of the modalities' tokenisers (and of a joint sequence); default: ``modalities``.
    order: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec, shared_weights: bool = False):
        super().__init__(cfg, backbone, spec)
        streams = self.order or self.modalities
        self.tokens = Tokenizers(backbone, spec, streams)
        self.streams = Streams(backbone, streams, shared_weights=shared_weights)
        self.norm = layer_norm(backbone.embed_dim)

    def unimodal(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every stream through all its blocks on its own, then the final norm: late fusion's encoder.

        Returns:
            ``{m: (B, 1 + N_m, D)}`` and the presence masks ``{m: (B,) bool}``.
        """
        streams = self.order or self.modalities
        present, full = present_masks(batch, streams), complete(batch, streams)
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D)
        z = self.streams(z, stream_masks(z, present, full), range(self.backbone.depth))
        return {m: self.norm(x) for m, x in z.items()}, present

    def backbone_mapping(self, vit: ImageViT) -> Mapping:
        """Our parameter name -> (checkpoint value, its source); a subclass adds what it has beyond the streams."""
        stacks = {f"streams.blocks.{name}": blocks for name, blocks in self.streams.blocks.items()}
        return vit_mapping(self.tokens, stacks, vit, self.backbone, self.spec)

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        vit = image_vit(state_dict)
        return apply_mapping(self, self.backbone_mapping(vit), vit)
