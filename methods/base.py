"""The base every fusion method subclasses, and the helpers all of them share for missing modalities and read-out.

Missing modalities (DESIGN.md): a batch carries ``audio_present`` / ``video_present`` (B,) bool. An absent
modality's patch tokens are never attention keys (key padding) and never reach the read-out. A stream's own CLS
token is always a key in that stream, so a clip whose modality is absent still has one key per attention row (no
NaN from an all-masked softmax) and its CLS output depends on learned parameters only.

Shapes: ``B`` batch, ``N`` tokens of a sequence (CLS included), ``M`` modalities, ``D`` width.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from harness.backbones import BackboneConfig
from harness.data.base import InputSpec
from harness.weights import (
    CheckpointError,
    ImageViT,
    LoadReport,
    Mapping,
    apply_mapping,
    image_vit,
    map_blocks,
    map_norm,
    map_tokenizers,
)


class MethodConfig(BaseModel):
    """Base of every method's typed config; subclasses add fields, each with a description."""

    model_config = ConfigDict(extra="forbid")

    families: ClassVar[tuple[str, ...]] = ("vit",)  # backbone families the method is built for

    name: str = Field(description="registry name of the method")

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        """Cross-checks against the backbone; ``(key path, message)`` pairs, empty when consistent."""
        return []

    def check_family(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        """An error when the method has no implementation on ``backbone.family``."""
        if backbone.family in self.families:
            return []
        built = " or ".join(self.families)
        msg = f"method {self.name!r} is built on {built} backbones, not {backbone.family} ({backbone.name})"
        return [("backbone.family", msg + "; pick a ViT backbone (e.g. vit_b16)")]


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


class FusionMethod(nn.Module):
    """An audio-visual encoder whose ``forward(batch)`` returns ``{"embedding": (B, D), ...}``.

    Subclasses set ``Config`` and, when they consume one stream only, ``modalities``. The task owns the head and
    the loss, so every method is scored by the same head.

    Args:
        cfg: the method's config (an instance of ``Config``).
        backbone: width, depth and tokenisation of the streams.
        spec: the dataset's input shapes.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    modalities: ClassVar[tuple[str, ...]] = ("audio", "video")

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.spec = spec
        self.embed_dim: int = backbone.embed_dim

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        """Fill the backbone from an image ViT's state dict (timm layout), MBT's way (``harness/weights.py``).

        Called by ``harness.trial.build_model`` after init when ``backbone.checkpoint`` is set. Parameters that
        the checkpoint has no counterpart for keep their init and are reported as missing.

        Raises:
            harness.weights.CheckpointError: a backbone tensor whose shape differs and cannot be resized.
        """
        vit = image_vit(state_dict)
        return apply_mapping(self, self.backbone_mapping(vit), vit)

    def backbone_mapping(self, vit: ImageViT) -> Mapping:
        """Our parameter name -> (checkpoint value, its source) for the layouts the methods share.

        ``tokens`` (``methods._blocks.Tokenizers`` or LAVISH's shared tokeniser), ``norm``, and the blocks as
        ``streams`` (``methods._blocks.Streams``: late, the unimodal baselines, cross, vanilla, MBT; every stream, or
        the one shared stack, gets the same blocks) or as one ``blocks`` list (the frozen shared backbone of LAVISH
        and its kin). A method laid out otherwise overrides this.
        """
        tokens, norm = getattr(self, "tokens", None), getattr(self, "norm", None)
        if hasattr(self, "streams"):
            stacks = {f"streams.blocks.{name}": blocks for name, blocks in self.streams.blocks.items()}
        elif isinstance(getattr(self, "blocks", None), nn.ModuleList):
            stacks = {"blocks": self.blocks}
        else:
            stacks = None
        if tokens is None or norm is None or stacks is None:
            raise CheckpointError(
                f"method {self.cfg.name!r} has no backbone-checkpoint mapping (it is not laid out as tokens, "
                "streams or blocks, norm); drop backbone.checkpoint or give the method a backbone_mapping"
            )
        # Audio read through the video tubelet's central frame (LAVISH's image path) needs the image kernel there.
        shared_audio = "audio" in self.modalities and "audio" not in tokens.patch
        if shared_audio and self.backbone.tubelet > 1 and self.backbone.tubelet_init != "central":
            raise CheckpointError(
                f"backbone.tubelet_init={self.backbone.tubelet_init}: {self.cfg.name} feeds audio through the tubelet "
                "kernel's central frame, which must hold the image kernel; use backbone.tubelet_init=central"
            )
        out = map_tokenizers(tokens, "tokens", vit, self.backbone, self.spec)
        for prefix, blocks in stacks.items():
            out |= map_blocks(blocks, prefix, vit)
        return out | map_norm("norm", vit)


def present_masks(batch: dict, modalities: tuple[str, ...]) -> dict[str, Tensor]:
    """``{modality: (B,) bool}``; a batch without a ``<m>_present`` key has that modality everywhere."""
    out = {}
    for m in modalities:
        x = batch[m]
        mask = batch.get(f"{m}_present")
        out[m] = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
    return out


def keep_keys(present: Tensor, n_patches: int, keep_cls: Tensor | bool = True) -> Tensor:
    """Which keys of a ``[CLS ‖ patches]`` sequence may be attended: (B, 1 + n_patches) bool.

    Args:
        present: (B,) bool, whether the modality is present.
        n_patches: its patch tokens.
        keep_cls: whether its CLS is a key; True in its own stream, ``present`` in a joint sequence.
    """
    cls = torch.as_tensor(keep_cls, device=present.device).expand(present.shape[0])[:, None]  # (B, 1)
    return torch.cat([cls, present[:, None].expand(-1, n_patches)], dim=1)  # (B, 1 + n_patches)


def attn_mask(keep: Tensor) -> Tensor:
    """A (B, N) key-keep mask as the bool SDPA mask (B, 1, 1, N): True = may be attended, by every query."""
    return keep[:, None, None, :]


def modality_weights(present: dict[str, Tensor]) -> Tensor:
    """(B, M) weights of a mean over present modalities; a clip with none present averages all of them.

    The fallback keeps outputs finite (and data-independent, since only CLS tokens are then valid).
    """
    w = torch.stack([p for p in present.values()], dim=1).float()  # (B, M)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    return w / w.sum(1, keepdim=True)


def mean_over_modalities(x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """Mean of per-modality tensors (B, ...) over the present modalities of each clip."""
    w = modality_weights({m: present[m] for m in x})  # (B, M)
    stacked = torch.stack(list(x.values()), dim=1)  # (B, M, ...)
    w = w.reshape(w.shape + (1,) * (stacked.dim() - 2))
    return (w * stacked).sum(1)


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
