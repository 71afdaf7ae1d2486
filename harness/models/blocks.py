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
    TokenLayout,
    attn_mask,
    complete,
    keep_keys,
    mean_over_modalities,
    present_masks,
    token_outputs,
)
from harness.models.backbones import (
    AudioPatchEmbed,
    BackboneConfig,
    VideoPatchEmbed,
    audio_grid,
    cls_token,
    layer_norm,
    make_blocks,
    num_audio_tokens,
    num_video_tokens,
    pos_table,
    time_slots,
    video_grid,
)
from harness.models.cnn import AudioClipCNN, VideoClipCNN
from harness.models.weights import ImageViT, LoadReport, Mapping, apply_mapping, image_vit, vit_mapping

Readout = Literal["cls", "gap"]
MBTReadout = Literal["cls", "gap", "gap_cls"]  # MBT's two classifiers, and the harness's former GAP


def readout_field(gap_cls: bool = False) -> Any:
    """The ``readout`` config field of the token-fusion methods (MBT's two classifiers); ``gap_cls``: the MBT
    methods' third value, the former GAP that keeps CLS tokens as keys."""
    if gap_cls:
        return Field(
            "cls",
            description="cls: per-modality CLS (MBT's paper); gap: scenic's classifier='gap', no CLS tokens at all, "
            "mean of the present tokens (MBT's AS config); gap_cls: CLS tokens kept as attention keys but left out "
            "of the mean (the harness before)",
        )
    return Field(
        "cls", description="cls: per-modality CLS (MBT's paper); gap: mean of present patch tokens (MBT's AS config)"
    )


def own_keys(present: Tensor, n_tokens: int, cls: bool = True) -> Tensor:
    """(B, n_tokens) keys of a modality's own sequence.

    With a CLS first: the CLS always, the patches when present (:func:`harness.api.keep_keys`). Without one (scenic's
    GAP model): every token. A present clip's tokens are all real; an absent clip's are its zero placeholder's
    embeddings, which depend on parameters only, so the clip's outputs stay data-independent, every attention row has
    a key, and those tokens are never keys of another modality nor pooled.
    """
    if cls:
        return keep_keys(present, n_tokens - 1)
    return torch.ones(present.shape[0], n_tokens, dtype=torch.bool, device=present.device)


def own_masks(keys: dict[str, Tensor], full: bool, cls: bool = True) -> dict[str, Tensor | None]:
    """Attention masks ``{m: (B, 1, 1, N_m)}`` of each modality's own sequence from its :func:`own_keys`, or None where
    every token is a key: a complete batch (``full``, :func:`harness.api.complete`), or no CLS tokens (scenic's GAP
    model keeps an absent modality's placeholder tokens as keys of its own sequence). None lets SDPA take its fused
    kernels."""
    if full or not cls:
        return dict.fromkeys(keys)
    return {m: attn_mask(k) for m, k in keys.items()}


def joint_keys(present: dict[str, Tensor], z: dict[str, Tensor], cls: bool = True) -> Tensor:
    """(B, N) keys of the joint sequence ``[z_m for m in z]``: a present modality's tokens (its CLS included).

    A clip with no modality present keeps the CLS tokens as keys, or without CLS tokens every (placeholder) token,
    so no attention row is empty.
    """
    none = ~torch.stack([present[m] for m in z]).any(0)  # (B,)
    if cls:
        keep = [keep_keys(present[m], x.shape[1] - 1, keep_cls=present[m] | none) for m, x in z.items()]
    else:
        keep = [(present[m] | none)[:, None].expand(-1, x.shape[1]) for m, x in z.items()]
    return torch.cat(keep, dim=1)


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


def vit_token_layout(
    backbone: BackboneConfig,
    spec: InputSpec,
    modalities: tuple[str, ...],
    audio_patch: tuple[int, int] | None = None,
    audio_time_major: bool = False,
) -> TokenLayout:
    """The :class:`harness.api.TokenLayout` of a ViT method's patch tokens (time-major video tubelets; audio over the
    (freq, time) grid of ``audio_patch``, frequency-major unless ``audio_time_major``: the (time x mel) image)."""
    d = backbone.embed_dim
    layout = {}
    if "video" in modalities:
        layout["video"] = (*video_grid(backbone, spec), d)
    if "audio" in modalities:
        # plain Python (no config copy, no tensor): forwards call this, also under torch.compile(fullgraph=True)
        if audio_patch is None:
            fa, ta = audio_grid(backbone, spec)
        else:
            fa, ta = spec.n_mels // audio_patch[0], spec.n_frames // audio_patch[1]
        steps = tuple(i // fa if audio_time_major else i % ta for i in range(fa * ta))
        layout |= dict(audio=(fa * ta, d), audio_steps=ta, audio_time=steps)
    return TokenLayout(**layout)


class Tokenizers(nn.Module):
    """Each modality's input -> ``[CLS ‖ patches + pos]`` (B, 1 + N_m, D).

    The positional table covers the patch tokens only and the CLS is prepended after it, as in MBT's
    ``temporal_encode`` followed by the ``cls`` concatenation.

    Args:
        backbone: patch sizes and width.
        spec: input shapes (fix the positional tables' lengths).
        modalities: which of ``("audio", "video")`` to build.
        cls: prepend a CLS token per modality; False: ``patches + pos`` only (scenic's ``classifier='gap'``).
    """

    def __init__(self, backbone: BackboneConfig, spec: InputSpec, modalities: tuple[str, ...], cls: bool = True):
        super().__init__()
        d = backbone.embed_dim
        make = {
            "video": (VideoPatchEmbed, num_video_tokens),
            "audio": (AudioPatchEmbed, num_audio_tokens),
        }
        if backbone.family == "cnn":  # one token per short clip (harness/models/cnn.py); pos = the clip's time
            cnns = {"video": VideoClipCNN, "audio": AudioClipCNN}
            self.patch = nn.ModuleDict({m: cnns[m](backbone, spec) for m in modalities})
        else:
            self.patch = nn.ModuleDict({m: make[m][0](backbone) for m in modalities})
        self.pos = nn.ParameterDict({m: pos_table(make[m][1](backbone, spec), d) for m in modalities})
        self.has_cls = cls
        self.cls = nn.ParameterDict({m: cls_token(d) for m in modalities} if cls else {})
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
        return self.assemble(self.embed(batch, present, full))

    def embed(self, batch: dict, present: dict[str, Tensor], full: bool = False) -> dict[str, Tensor]:
        """Each modality's patch (or, ``family: cnn``, clip) embeddings (B, N_m, D), before positions and CLS."""
        out = {}
        for m, embed in self.patch.items():
            x = batch[m]
            # An absent clip may carry any placeholder (even NaN); masked keys still multiply their values by 0,
            # so the input is replaced, not scaled.
            if not full:
                keep = present[m].reshape((-1,) + (1,) * (x.dim() - 1))
                x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
            out[m] = embed(x)  # (B, N_m, D)
        return out

    def assemble(self, embedded: dict[str, Tensor]) -> dict[str, Tensor]:
        """``[CLS ‖ embeddings + pos (+ time)]`` (B, 1 + N_m, D) of :meth:`embed`'s output (or a masked copy)."""
        out = {}
        for m, x in embedded.items():
            tokens = x + self.pos[m]  # (B, N_m, D)
            if self.time is not None:
                tokens = tokens + self.time[getattr(self, f"{m}_slot")]  # (N_m, D) broadcast over B
            if not self.has_cls:
                out[m] = tokens  # (B, N_m, D)
                continue
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


def readout_gap(z: dict[str, Tensor], present: dict[str, Tensor], cls: bool = True) -> dict:
    """MBT's ``classifier='gap'``: mean over every patch token of the present modalities (CLS excluded).

    Tokens are pooled jointly, so a modality weighs by its token count, as in MBT. A clip with no modality
    present pools the CLS tokens instead (without CLS tokens: all its placeholder tokens), which keeps the
    embedding finite and data-independent.

    Args:
        z: ``{modality: (B, 1 + N_m, D)}``, or ``(B, N_m, D)`` when ``cls`` is False (scenic's GAP model).
        present: ``{modality: (B,) bool}``.
        cls: whether each sequence starts with a CLS token.
    """
    tokens = torch.cat(list(z.values()), dim=1)  # (B, N, D)
    is_cls = torch.cat([(torch.arange(x.shape[1], device=tokens.device) == 0) & cls for x in z.values()])  # (N,)
    patch = torch.cat([present[m][:, None].expand(-1, x.shape[1]) for m, x in z.items()], dim=1) & ~is_cls
    none = ~patch.any(1, keepdim=True)  # (B, 1)
    fallback = is_cls if cls else torch.ones_like(is_cls)  # the CLS tokens, or every placeholder token
    w = torch.where(none, fallback.expand_as(patch), patch).float()  # (B, N)
    return {"embedding": (w[..., None] * tokens).sum(1) / w.sum(1, keepdim=True)}


def read_out(z: dict[str, Tensor], present: dict[str, Tensor], readout: str) -> dict:
    """The token-fusion methods' read-out: ``cls`` (:func:`readout_cls`), ``gap`` over sequences without CLS tokens,
    ``gap_cls`` over sequences with them (:func:`readout_gap`)."""
    if readout == "cls":
        return readout_cls(z, present)
    return readout_gap(z, present, cls=readout == "gap_cls")


class ViTStreams(FusionMethod):
    """A method on per-modality ViT streams: ``tokens`` (:class:`Tokenizers`), ``streams`` (:class:`Streams`) and
    one final ``norm``, built in that order; what it does with them is the subclass's ``forward``.

    ``load_backbone`` fills them from an image ViT MBT's way: block l of the checkpoint into block l of every stream
    (or the one shared stack), the tokenisers' kernels and positional tables resized (``harness.models.weights``).

    Args:
        cfg, backbone, spec: as :class:`harness.api.FusionMethod`.
        shared_weights: one block stack for every modality (MBT's ``share_encoder=True``).
        cls_tokens: a CLS token per modality; False for scenic's GAP model (``readout: gap``).
    """

    # The order of the modalities' tokenisers (and of a joint sequence); default: ``modalities``.
    order: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec, shared_weights: bool = False,
                 cls_tokens: bool = True):  # fmt: skip
        super().__init__(cfg, backbone, spec)
        streams = self.order or self.modalities
        self.tokens = Tokenizers(backbone, spec, streams, cls=cls_tokens)
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
        own = {m: own_keys(present[m], x.shape[1], self.tokens.has_cls) for m, x in z.items()}  # m -> (B, N)
        z = self.streams(z, own_masks(own, full, self.tokens.has_cls), range(self.backbone.depth))
        return {m: self.norm(x) for m, x in z.items()}, present

    def token_layout(self) -> TokenLayout:
        return vit_token_layout(self.backbone, self.spec, self.order or self.modalities)

    def with_tokens(self, out: dict, z: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
        """``out`` and the ``tokens`` of the final sequences ``z`` (``{m: (B, [1 +] N_m, D)}`` after the norm)."""
        return dict(out, tokens=token_outputs(z, present, self.token_layout(), self.tokens.has_cls))

    def backbone_mapping(self, vit: ImageViT) -> Mapping:
        """Our parameter name -> (checkpoint value, its source); a subclass adds what it has beyond the streams."""
        stacks = {f"streams.blocks.{name}": blocks for name, blocks in self.streams.blocks.items()}
        return vit_mapping(self.tokens, stacks, vit, self.backbone, self.spec)

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        vit = image_vit(state_dict)
        return apply_mapping(self, self.backbone_mapping(vit), vit)
