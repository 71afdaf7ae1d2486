"""The frozen shared ViT that LAVISH, AVISH and their parameter-efficient baselines adapt.

Paper: Lin, Sung, Lei, Bansal, Bertasius, "Vision Transformers are Parameter-Efficient Audio-Visual Learners",
CVPR 2023, https://arxiv.org/abs/2212.07983.
Reference implementation: GenjiB/LAVISH ``AVE/nets/net_trans.py`` (``MMIL_Net.forward_vit``).

One pretrained image ViT processes both modalities with the same frozen weights: the spectrogram is fed as a
3-channel image through the video patch embedding (``SharedTokenizer``, ``audio_embed: image``), as the AVE code's
(time x mel) image by default (``audio_orientation: time_mel``: its ``dataloader.py`` keeps Kaldi's (frames, mel)
fbank and ``net_trans.py`` repeats it to 3 channels as it is; the paper does not say), each modality runs
through the same blocks in its own sequence, and each modality's CLS after the final LayerNorm is scored by the
task's shared head (``readout_cls``). Everything built here is frozen; the backbone's LayerNorms train only with
``train_norms`` (the code's ``is_vit_ln``). A subclass adds its trainable parts after ``super().__init__`` and
overrides :meth:`FrozenBackbone.block` (what happens in block ``l``) or leaves the blocks as they are (``frozen``,
``lora``, whose low-rank updates sit inside the blocks' linears).

The backbone's weights live under three attributes, ``tokens``, ``blocks`` and ``norm`` (:data:`BACKBONE_PARTS`),
so a pretrained backbone (``harness/run/pretrain.py``) loads into every such method the same way
(:func:`load_backbone_state`).

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import (
    CheckpointError,
    FusionMethod,
    InputSpec,
    MethodConfig,
    TokenLayout,
    complete,
    present_masks,
    stream_masks,
    token_outputs,
)
from harness.models.backbones import BackboneConfig, audio_grid, layer_norm, make_blocks, num_audio_tokens
from harness.models.blocks import Tokenizers, readout_cls, vit_token_layout
from harness.models.weights import ImageViT, LoadReport, Mapping, apply_mapping, image_vit, vit_mapping

BACKBONE_PARTS = ("tokens", "blocks", "norm")
AudioEmbed = Literal["image", "spectrogram"]
AudioOrientation = Literal["time_mel", "mel_time"]


def audio_embed_field() -> AudioEmbed:
    """The ``audio_embed`` config field of every frozen-backbone method."""
    return Field(
        "image",
        description="image: the paper's way, the spectrogram repeated to 3 channels through the video patch "
        "embedding's 2-D kernel with the video positional table interpolated; spectrogram: the backbone's own "
        "1-channel audio patch embedding, positional table and CLS",
    )


def audio_orientation_field() -> AudioOrientation:
    """The ``audio_orientation`` config field of every method that feeds the spectrogram as an image."""
    return Field(
        "time_mel",
        description="audio_embed=image only: time_mel = the spectrogram as a (time x mel) image, rows = frames "
        "(GenjiB/LAVISH AVE code; the paper does not say); mel_time = a (mel x time) image (the harness before)",
    )


class FrozenConfig(MethodConfig):
    """Fields of the frozen shared backbone, common to the parameter-efficient baselines."""

    train_norms: bool = Field(False, description="make the frozen backbone's LayerNorms trainable (is_vit_ln)")
    audio_embed: AudioEmbed = audio_embed_field()
    audio_orientation: AudioOrientation = audio_orientation_field()


def image_patches(x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, kernel, bias, stride=p)`` flattened row-major to (B, rows·cols, D), as one matmul.

    With kernel = stride the patches do not overlap, so the convolution is the (B, f·t, C·p·p) patch matrix times
    the kernel viewed as (D, C·p·p): the same arithmetic and FLOP count, and a faster backward on CPU than oneDNN's
    convolution (bench/step.py; ``harness.models.backbones.AudioPatchEmbed`` does the same). A remainder is dropped.

    Args:
        x: (B, C, rows, cols): (B, C, F, T) for a (mel x time) image, (B, C, T, F) for a (time x mel) one.
        kernel: (D, C, p, p).
        bias: (D,) or None.
    """
    b, c, freq, frames = x.shape
    p = kernel.shape[-1]
    f, t = freq // p, frames // p
    x = x[:, :, : f * p, : t * p].reshape(b, c, f, p, t, p).permute(0, 2, 4, 1, 3, 5).reshape(b, f * t, c * p * p)
    return F.linear(x, kernel.reshape(kernel.shape[0], -1), bias)


class SharedTokenizer(Tokenizers):
    """The paper's ViT tokenisation: one patch kernel, one positional table and one CLS for both modalities.

    Built as video-only ``Tokenizers`` on a copy of the backbone whose audio patch is the video patch, so the shared
    time table (``backbone.time_embed``) gets the image grid's audio time slots.

    Args:
        backbone, spec: as ``Tokenizers``.
        orientation: ``time_mel``: the (1, n_mels, n_frames) log-mel is transposed to a (n_frames x n_mels) image,
            the AVE code's, so audio tokens are time-major; ``mel_time``: fed as it is, tokens frequency-major.
    """

    def __init__(self, backbone: BackboneConfig, spec: InputSpec, orientation: AudioOrientation = "time_mel"):
        p = backbone.patch_size
        image = backbone.model_copy(update={"audio_patch": (p, p)})
        super().__init__(image, spec, ("video",))
        self.audio_tokens = num_audio_tokens(image, spec)
        if self.audio_tokens == 0:
            raise ValueError(
                f"method.audio_embed=image: a {spec.n_mels}x{spec.n_frames} spectrogram yields no {p}x{p} patch "
                "(backbone.patch_size); use method.audio_embed=spectrogram"
            )
        self.time_major = orientation == "time_mel"
        if self.time is not None and self.time_major:  # the same slots, in the time-major token order
            fa, ta = audio_grid(image, spec)
            self.audio_slot = (torch.arange(fa * ta) // fa) * self.time.shape[0] // max(ta, 1)

    def forward(self, batch: dict, present: dict[str, Tensor], full: bool = False) -> dict[str, Tensor]:
        out = super().forward(batch, present, full)  # {"video": (B, 1 + Nv, D)}
        x = batch["audio"]
        if not full:
            x = torch.where(present["audio"][:, None, None, None], x, 0.0)  # placeholder -> 0, even NaN
        if self.time_major:
            x = x.transpose(2, 3)  # (B, 1, n_frames, n_mels): Kaldi's (frames, mel) fbank as the AVE code keeps it
        proj = self.patch["video"].proj
        kernel = proj.weight[:, :, proj.weight.shape[2] // 2]  # (D, 3, p, p): the tubelet's central frame
        tokens = image_patches(x.expand(-1, 3, -1, -1), kernel, proj.bias)  # (B, Na, D), row-major over the image
        pos = F.interpolate(self.pos["video"].transpose(1, 2), size=self.audio_tokens, mode="linear")  # (1, D, Na)
        tokens = tokens + pos.transpose(1, 2)
        if self.time is not None:
            tokens = tokens + self.time[self.audio_slot]
        cls = self.cls["video"].expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return {"audio": torch.cat([cls, tokens], dim=1), **out}  # audio: (B, 1 + Na, D)


class FrozenBackbone(FusionMethod):
    """A frozen shared ViT run over each modality separately, read out per modality (the linear probe's encoder).

    Args:
        cfg: ``train_norms`` and ``audio_embed`` (any config with those fields).
        backbone: width, depth, heads, patch sizes.
        spec: the dataset's input shapes.
    """

    Config = FrozenConfig
    frozen_prefix: ClassVar[str] = "tokens"  # always frozen: harness/run/frozen_cache.py may cache its output

    def __init__(self, cfg: FrozenConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        if errors := cfg.check(backbone):
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in errors))
        if cfg.audio_embed == "image":
            self.tokens = SharedTokenizer(backbone, spec, cfg.audio_orientation)
        else:
            self.tokens = Tokenizers(backbone, spec, self.modalities)
        self.blocks = make_blocks(backbone, backbone.depth)
        self.norm = layer_norm(backbone.embed_dim)
        self.requires_grad_(False)  # the backbone, before any trainable part exists
        if cfg.train_norms:
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)

    def block(self, layer: int, z: dict[str, Tensor], own: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
        """Block ``layer`` applied to every modality's own sequence: z_m <- Block_l(z_m). Subclasses adapt it.

        Args:
            layer: l.
            z: ``{m: (B, 1 + N_m, D)}``.
            own: ``{m: (B, 1, 1, 1 + N_m)}`` key masks of each modality's own sequence; None: every key present.
            present: ``{m: (B,)}`` bool; ``{m: None}`` when every clip has every modality.
        """
        blk = self.blocks[layer]
        return {m: blk(x, attn_mask=own[m]) for m, x in z.items()}

    def encode(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every token after the final norm, ``{m: (B, 1 + N_m, D)}``, and the presence masks ``{m: (B,)}``."""
        present, full = present_masks(batch, self.modalities), complete(batch, self.modalities)
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D)
        own = stream_masks(z, present, full)  # m -> (B, 1, 1, 1 + N_m) or None
        rows = dict.fromkeys(present) if full else present  # what the blocks' adapters see
        for layer in range(len(self.blocks)):
            z = self.block(layer, z, own, rows)
        return {m: self.norm(x) for m, x in z.items()}, present

    def forward(self, batch: dict) -> dict:
        z, present = self.encode(batch)
        return self.with_tokens(readout_cls(z, present), z, present)

    def token_layout(self) -> TokenLayout:
        """Video tubelets as ``Tokenizers``; audio on the image grid of the video patch (``audio_embed: image``, time-
        major for a (time x mel) image) or the backbone's audio patch grid (``spectrogram``)."""
        cfg: FrozenConfig = self.cfg
        if cfg.audio_embed == "image":
            p, time_major = self.backbone.patch_size, cfg.audio_orientation == "time_mel"
            return vit_token_layout(self.backbone, self.spec, self.modalities, (p, p), time_major)
        return vit_token_layout(self.backbone, self.spec, self.modalities)

    def with_tokens(self, out: dict, z: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
        """``out`` and the ``tokens`` of the final sequences ``z`` (``{m: (B, 1 + N_m, D)}`` after the norm)."""
        return dict(out, tokens=token_outputs(z, present, self.token_layout()))

    def backbone_mapping(self, vit: ImageViT) -> Mapping:
        """An image ViT onto ``tokens``, ``blocks`` and ``norm``, MBT's way (``harness.models.weights``)."""
        # Audio read through the video tubelet's central frame (the paper's image path) needs the image kernel there.
        shared_audio = "audio" in self.modalities and "audio" not in self.tokens.patch
        if shared_audio and self.backbone.tubelet > 1 and self.backbone.tubelet_init != "central":
            raise CheckpointError(
                f"backbone.tubelet_init={self.backbone.tubelet_init}: {self.cfg.name} feeds audio through the tubelet "
                "kernel's central frame, which must hold the image kernel; use backbone.tubelet_init=central"
            )
        return vit_mapping(self.tokens, {"blocks": self.blocks}, vit, self.backbone, self.spec)

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        vit = image_vit(state_dict)
        return apply_mapping(self, self.backbone_mapping(vit), vit)


def _backbone_keys(method: nn.Module) -> dict[str, str]:
    """Plain backbone key -> the method's key, over :data:`BACKBONE_PARTS`, the added (adapter) weights excluded.

    peft's LoRA wraps a linear as ``<name>.base_layer`` beside its ``lora_A`` / ``lora_B``; the plain key drops
    ``.base_layer`` so that one pretrained file fits every method.
    """
    keys = {}
    for part in BACKBONE_PARTS:
        for key in getattr(method, part).state_dict():
            if ".lora_" in key:
                continue
            keys[f"{part}.{key}".replace(".base_layer.", ".")] = f"{part}.{key}"
    return keys


def backbone_state(method: nn.Module) -> dict[str, Tensor]:
    """The backbone's weights of a frozen-backbone method under plain keys (``tokens.*``, ``blocks.*``, ``norm.*``)."""
    state = method.state_dict()
    return {plain: state[key] for plain, key in _backbone_keys(method).items()}


def load_backbone_state(method: nn.Module, state: dict[str, Tensor], source: str = "the backbone state") -> None:
    """Copy plain-keyed backbone weights into ``method``; every key on both sides must match.

    Raises:
        ValueError: a key missing on either side, or a shape that differs, named with ``source``.
    """
    keys = _backbone_keys(method)
    missing, unexpected = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit method {method.cfg.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(was it made for another backbone or method.audio_embed?)"
        )
    own = method.state_dict()
    for plain, key in keys.items():
        if own[key].shape != state[plain].shape:
            raise ValueError(f"{source}: {plain} has shape {tuple(state[plain].shape)}, the method's {key} "
                             f"{tuple(own[key].shape)}")  # fmt: skip
    with torch.no_grad():
        for plain, key in keys.items():
            own[key].copy_(state[plain])
