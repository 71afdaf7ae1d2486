"""ViT backbones shared by every fusion method: config, presets, tokenisers, positional tables, blocks.

The pieces follow MBT's encoder (scenic ``mbt/model.py``, ``temporal_encode`` and ``EncoderBlock``): tubelet and
spectrogram patch embeddings with kernel = stride (VALID padding, a remainder is dropped), learned positional tables per
modality, zero-initialised CLS tokens, and pre-LN ViT blocks (timm ``Block``, LayerNorm eps 1e-6, qkv bias) whose
stochastic-depth rate grows linearly with depth. Their GELU is the exact one by default (timm's; scenic's flax
``nn.gelu`` is the tanh approximation: ``backbone.gelu: tanh``). timm 1.0.31's ``Block.forward(x, attn_mask=...)``
passes the mask to ``F.scaled_dot_product_attention``, so key-padding masks need no block subclass.

Shapes: ``B`` batch, ``T`` frames, ``H = W`` image size, ``D`` width, ``Nv`` / ``Na`` video / audio tokens.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.models.vision_transformer import Block, init_weights_vit_jax
from torch import Tensor, nn

from harness.api import InputSpec
from harness.models.cnn import VIDEO_CNNS, clip_errors

# What harness.models.weights.read_checkpoint reads
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


class BackboneConfig(BaseModel):
    """Width, depth and tokenisation of the ViT that every method builds its streams from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="preset name the defaults came from (e.g. 'tiny', 'vit_b16')")
    family: Literal["vit", "swinv2", "cnn"] = Field(
        "vit",
        description="vit: the harness's plain ViT (every method); swinv2: timm's Swin Transformer V2 (window "
        "attention, patch merging between stages), for the frozen-backbone methods that support it (lavish, avish); "
        "cnn: one token per short clip from a visual 3-D CNN and an audio 2-D CNN (AVBERT's front ends, "
        "harness/models/cnn.py; the clips of dataset.clips_per_sample), then the method's transformer blocks",
    )
    video_cnn: str = Field(
        "r2plus1d_18",
        description="cnn only: the visual 3-D CNN run on each short clip: torchvision's r3d_18, mc3_18 or "
        "r2plus1d_18 (random init, nothing downloaded), or tiny_r3d / tiny_r2plus1d (2 stages of torchvision's "
        "blocks at cnn_width, for CPU runs)",
    )
    audio_cnn: str = Field(
        "resnet18",
        description="cnn only: the audio 2-D CNN run on each clip's log-mel window: a timm model name (random init, "
        "1 input channel, pooled features, e.g. resnet18 or resnet50), or tiny_resnet (timm's ResNet with one "
        "BasicBlock per stage, cnn_width to 8 x cnn_width channels)",
    )
    cnn_width: int = Field(16, gt=0, description="cnn only: first-stage channels of the tiny_* CNNs (doubled after)")
    stage_depths: tuple[int, ...] | None = Field(
        None,
        description="swinv2 only: blocks per stage (e.g. [2, 2, 18, 2]); depth must be their sum, embed_dim and "
        "num_heads are the first stage's and double at each later stage",
    )
    window_size: int = Field(12, gt=0, description="swinv2 only: attention window (tokens per side)")
    embed_dim: int = Field(gt=0, description="D, token width")
    depth: int = Field(gt=0, description="L, number of transformer blocks per stream")
    num_heads: int = Field(gt=0, description="attention heads per block; must divide embed_dim")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of embed_dim")
    patch_size: int = Field(gt=0, description="spatial patch (pixels) of a video token")
    tubelet: int = Field(1, gt=0, description="temporal extent (frames) of a video token; 1 = per-frame patches")
    audio_patch: tuple[int, int] = Field(description="(freq, time) patch of the spectrogram, in bins and frames")
    drop_path: float = Field(
        0.0, ge=0.0, lt=1.0, description="stochastic-depth rate of the last block; linear from 0 at block 0 (MBT)"
    )
    time_embed: Literal["none", "shared"] = Field(
        "none",
        description="none: per-modality positional tables only (MBT); shared: plus one learned table indexed by "
        "each token's time slot and added to both modalities, so co-occurring audio and video tokens share a time code",
    )
    time_embed_std: float = Field(1.0, gt=0, description="init std of the shared time table (salient on purpose)")
    gelu: Literal["exact", "tanh"] = Field(
        "exact",
        description="the ViT blocks' GELU: exact (erf; timm and PyTorch, the weights of timm/LAVISH checkpoints); "
        "tanh: the tanh approximation, flax's nn.gelu default that scenic's MBT encoder uses",
    )
    checkpoint: str | None = Field(
        None,
        description="local image-ViT weights (.safetensors, .pth/.pt/.bin, .npz; timm layout), loaded by the "
        "method's load_backbone after init (harness/models/weights.py); or a harness run's training checkpoint "
        "(mlflow:RUN_ID, its checkpoint folder or state.pt; e.g. an av_pretrain run), whose method weights load "
        "by name into the same method (harness/run/transfer.py); None = random init",
    )
    tubelet_init: Literal["central", "average", "average_arp"] = Field(
        "central",
        description="how a checkpoint's 2-D patch kernel fills the tubelet kernel (scenic kernel_init_method): "
        "central = in the middle frame, zeros elsewhere (MBT); average = kernel / tubelet in every frame "
        "(inflation); average_arp = approximate-rank-pooling weights; no effect with tubelet=1",
    )
    transfer: Literal["finetune", "linear"] = Field(
        "finetune",
        description="finetune: every parameter trains; linear: linear evaluation, the method frozen (no gradients, "
        "always in eval mode: BatchNorm statistics and dropout as loaded) and only the task's head trained",
    )
    pretrained: Literal["none", "synthetic"] = Field(
        "none",
        description="synthetic: start a frozen-backbone method (lavish, adapter, ...) from a backbone pretrained once "
        "on unimodal synthetic objectives and cached (harness/run/pretrain.py); none: random init or "
        "backbone.checkpoint",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> BackboneConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.family == "swinv2":
            if not self.stage_depths:
                raise ValueError("family=swinv2 needs stage_depths (blocks per stage, e.g. [2, 2, 18, 2])")
            if sum(self.stage_depths) != self.depth:
                raise ValueError(f"depth={self.depth} must equal sum(stage_depths)={sum(self.stage_depths)}")
            if self.tubelet != 1:
                raise ValueError(f"family=swinv2 embeds each frame as an image: tubelet must be 1, not {self.tubelet}")
            if self.pretrained != "none":
                raise ValueError("pretrained=synthetic pretrains a ViT (harness/run/pretrain.py), not a Swin-V2; use "
                                 "backbone.checkpoint with a timm Swin-V2 state dict")  # fmt: skip
        elif self.stage_depths is not None:
            raise ValueError("stage_depths is a swinv2 field; a vit backbone has one stack of `depth` blocks")
        if self.family == "cnn" and self.video_cnn not in VIDEO_CNNS:
            raise ValueError(f"video_cnn={self.video_cnn!r} is not one of {', '.join(VIDEO_CNNS)}")
        if self.family == "cnn" and self.pretrained != "none":
            raise ValueError("pretrained=synthetic pretrains a ViT (harness/run/pretrain.py); a cnn backbone starts "
                             "from backbone.checkpoint (e.g. an av_pretrain run) or random init")  # fmt: skip
        return self

    def stage_widths(self) -> list[int]:
        """Token width of every stage: [D] for a ViT, [C, 2C, 4C, ...] for a Swin-V2."""
        return [self.embed_dim * 2**i for i in range(len(self.stage_depths or (self.depth,)))]

    @property
    def out_dim(self) -> int:
        """Width of the final tokens (the last stage's for a Swin-V2)."""
        return self.stage_widths()[-1]

    def check(self, spec: InputSpec | None = None) -> list[tuple[str, str]]:
        """Cross-checks that need the file system or the dataset's input spec.

        The checkpoint is only checked for existence here; loading it into a method's matching keys is the job
        of that method's ``load_backbone`` (``harness/models/weights.py``).

        Args:
            spec: the dataset's input shapes; when given, each modality must yield at least one token.

        Returns:
            ``(key, message)`` pairs, empty when the config is usable.
        """
        errors: list[tuple[str, str]] = []
        if self.checkpoint is not None and not self.checkpoint.startswith("mlflow:"):
            path = Path(self.checkpoint)
            if not _checkpoint_exists(self.checkpoint):
                errors.append(("backbone.checkpoint", f"{self.checkpoint!r} is not a file, nor a folder holding a "
                               "state.pt (checkpoints are local files, or mlflow:RUN_ID)"))  # fmt: skip
            elif path.is_file() and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                errors.append(("backbone.checkpoint", f"{path.name!r} has an unknown suffix; use "
                                                      f"{', '.join(CHECKPOINT_SUFFIXES)}"))  # fmt: skip
        if spec is not None:
            if num_video_tokens(self, spec) == 0:
                errors.append(
                    (
                        "backbone.patch_size",
                        f"video of {spec.frames}x{spec.image_size}x{spec.image_size} yields no tokens with "
                        f"tubelet={self.tubelet}, patch_size={self.patch_size}",
                    )
                )
            if num_audio_tokens(self, spec) == 0:
                errors.append(
                    (
                        "backbone.audio_patch",
                        f"spectrogram of {spec.n_mels}x{spec.n_frames} yields no tokens with "
                        f"audio_patch={list(self.audio_patch)}",
                    )
                )
            if self.family == "swinv2":
                errors += _swin_input_errors(self, spec)
            if self.family == "cnn":
                errors += clip_errors(spec)
        return errors


def _checkpoint_exists(path: str) -> bool:
    """A local weights file, or a training-checkpoint folder with its ``state.pt`` (``harness run``'s)."""
    p = Path(path)
    return p.is_file() or (p / "state.pt").is_file()


def _swin_input_errors(cfg: BackboneConfig, spec: InputSpec) -> list[tuple[str, str]]:
    """A Swin-V2 pairs frame t with audio window t (LAVISH's per-segment pairs): the shapes must split evenly."""
    p, errors = cfg.patch_size, []
    if spec.image_size % p or spec.n_mels % p:
        msg = (
            f"{p} must divide the image size {spec.image_size} and n_mels {spec.n_mels} (no VALID cropping in Swin-V2)"
        )
        errors.append(("backbone.patch_size", msg))
    if spec.n_frames % spec.frames or (spec.n_frames // spec.frames) % p:
        msg = f"{spec.n_frames} spectrogram frames must split into {spec.frames} windows (one per video frame)"
        errors.append(("input.n_frames", f"{msg} of a multiple of {p} frames each"))
    return errors


# Presets: zero-arg functions returning the defaults (BACKBONES entries resolve to these). One place to tune.
def tiny() -> dict:
    """A 4-layer width-64 ViT for CPU runs on the synthetic dataset, with a shared time table (docs/methods.md).

    One token per frame (a 32 px patch covers the synthetic default's 32 px frame) and one per 16 spectrogram frames
    over all 32 mel bins, so each modality has one token per time step on the same grid.
    """
    return dict(name="tiny", embed_dim=64, depth=4, num_heads=4, patch_size=32, tubelet=1, audio_patch=(32, 16),
                time_embed="shared")  # fmt: skip


def _vit16(name: str, embed_dim: int, depth: int, num_heads: int) -> dict:
    return dict(
        name=name,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=16,
        tubelet=2,
        audio_patch=(16, 16),
    )


def vit_ti16() -> dict:
    """ViT-Ti/16 with 2-frame tubelets."""
    return _vit16("vit_ti16", 192, 12, 3)


def vit_s16() -> dict:
    """ViT-S/16 with 2-frame tubelets."""
    return _vit16("vit_s16", 384, 12, 6)


def vit_b16() -> dict:
    """ViT-B/16 with 2-frame tubelets (MBT-B)."""
    return _vit16("vit_b16", 768, 12, 12)


def vit_l16() -> dict:
    """ViT-L/16 with 2-frame tubelets (the AV-MAE VGGSound MBT)."""
    return _vit16("vit_l16", 1024, 24, 16)


def _swinv2(name: str, embed_dim: int, num_heads: int, stage_depths: tuple[int, ...], window_size: int) -> dict:
    return dict(name=name, family="swinv2", embed_dim=embed_dim, depth=sum(stage_depths), num_heads=num_heads,
                stage_depths=stage_depths, window_size=window_size, patch_size=4, tubelet=1, audio_patch=(4, 4),
                drop_path=0.1)  # fmt: skip


def swinv2_b() -> dict:
    """Swin-V2-B, window 12 (timm ``swinv2_base_window12_192``; LAVISH's ``swinv2_base_window12_192_22k``)."""
    return _swinv2("swinv2_b", 128, 4, (2, 2, 18, 2), 12)


def swinv2_l() -> dict:
    """Swin-V2-L, window 12 (timm ``swinv2_large_window12_192``; LAVISH's default ``swinv2_large_window12_192_22k``)."""
    return _swinv2("swinv2_l", 192, 6, (2, 2, 18, 2), 12)


def _cnn(name: str, video_cnn: str, audio_cnn: str, embed_dim: int, depth: int, num_heads: int, **extra) -> dict:
    # patch_size / tubelet / audio_patch are ViT fields a cnn backbone does not read (one token per clip)
    return dict(name=name, family="cnn", video_cnn=video_cnn, audio_cnn=audio_cnn, embed_dim=embed_dim, depth=depth,
                num_heads=num_heads, patch_size=1, tubelet=1, audio_patch=(1, 1), **extra)  # fmt: skip


def cnn_tiny() -> dict:
    """AVBERT's layout for CPU runs: tiny 3-D / 2-D ResNets (width 16) embed each short clip, a width-64 4-layer
    transformer over the clip sequences, and the shared time table (one code per clip position, both modalities)."""
    return _cnn("cnn_tiny", "tiny_r3d", "tiny_resnet", 64, 4, 4, cnn_width=16, time_embed="shared")


def cnn_r2plus1d18() -> dict:
    """torchvision's R(2+1)D-18 and timm's ResNet-18 as the clip CNNs (random init), BERT-base-width transformers;
    AVBERT used a SlowFast-codebase 3-D ResNet-50 and an audio ResNet-50 (``audio_cnn: resnet50``)."""
    return _cnn("cnn_r2plus1d18", "r2plus1d_18", "resnet18", 768, 12, 12)


def swinv2_micro() -> dict:
    """A 2-stage width-32 Swin-V2 with 4-token windows, for CPU tests of the Swin path on the synthetic dataset."""
    return dict(_swinv2("swinv2_micro", 32, 2, (2, 2), 4), drop_path=0.0)


def video_grid(cfg: BackboneConfig, spec: InputSpec) -> tuple[int, int, int]:
    """(t, h, w) grid of video tokens; VALID padding drops a remainder, as MBT's conv does. A cnn backbone has one
    token per short clip: (K, 1, 1)."""
    if cfg.family == "cnn":
        return spec.clips, 1, 1
    side = spec.image_size // cfg.patch_size
    return spec.frames // cfg.tubelet, side, side


def audio_grid(cfg: BackboneConfig, spec: InputSpec) -> tuple[int, int]:
    """(freq, time) grid of audio tokens; a cnn backbone's: (1, K), one per short clip."""
    if cfg.family == "cnn":
        return 1, spec.clips
    return spec.n_mels // cfg.audio_patch[0], spec.n_frames // cfg.audio_patch[1]


def num_video_tokens(cfg: BackboneConfig, spec: InputSpec) -> int:
    """Nv, video tokens per clip (CLS excluded)."""
    t, h, w = video_grid(cfg, spec)
    return t * h * w


def num_audio_tokens(cfg: BackboneConfig, spec: InputSpec) -> int:
    """Na, audio tokens per clip (CLS excluded)."""
    f, t = audio_grid(cfg, spec)
    return f * t


class VideoPatchEmbed(nn.Module):
    """Tubelet embedding: a Conv3d with kernel = stride = (tubelet, p, p) over (B, T, 3, H, W) -> (B, Nv, D)."""

    def __init__(self, cfg: BackboneConfig, in_chans: int = 3):
        super().__init__()
        k = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, Nv, D), tokens time-major; the Conv3d's output, computed as one matmul.

        With kernel = stride the patches do not overlap, so the convolution is a reshape of the clip into patch
        vectors times the kernel viewed as (D, C·kt·p·p). That is the same arithmetic (and the same FLOP count
        under ``FlopCounterMode``), and on CPU its backward is several times faster than oneDNN's Conv3d
        (bench/step.py). A remainder that VALID padding drops is cropped first.
        """
        b, frames, c, height, width = video.shape
        kt, p, _ = self.proj.kernel_size
        t, h, w = frames // kt, height // p, width // p
        x = video[:, : t * kt, :, : h * p, : w * p].reshape(b, t, kt, c, h, p, w, p)
        x = x.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(b, t * h * w, c * kt * p * p)  # (B, Nv, C·kt·p·p)
        return nn.functional.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class AudioPatchEmbed(nn.Module):
    """Spectrogram patch embedding: a Conv2d 1 -> D with kernel = stride = audio_patch over (B, 1, F, T)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.audio_patch, stride=cfg.audio_patch)

    def forward(self, audio: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, Na, D), frequency-major; the Conv2d's output as one matmul (as VideoPatchEmbed)."""
        b, c, freq, frames = audio.shape
        pf, pt = self.proj.kernel_size
        f, t = freq // pf, frames // pt
        x = audio[:, :, : f * pf, : t * pt].reshape(b, c, f, pf, t, pt)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, f * t, c * pf * pt)  # (B, Na, C·pf·pt)
        return nn.functional.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def time_slots(cfg: BackboneConfig, spec: InputSpec) -> tuple[Tensor, Tensor, int]:
    """Time slot of every video and audio token on a common grid of ``max(t_video, t_audio)`` slots.

    Both modalities span the same clip, so slot ``i`` of a modality with ``t_m`` time steps sits at
    ``i * grid // t_m``. Returns (video slots (Nv,), audio slots (Na,), grid size).
    """
    tv, h, w = video_grid(cfg, spec)
    fa, ta = audio_grid(cfg, spec)
    grid = max(tv, ta, 1)
    video = (torch.arange(tv * h * w) // (h * w)) * grid // max(tv, 1)  # video tokens are time-major
    audio = (torch.arange(fa * ta) % ta) * grid // max(ta, 1)  # audio tokens are frequency-major
    return video, audio, grid


def pos_table(n: int, dim: int) -> nn.Parameter:
    """Learned positional table (1, n, D), truncated-normal std 0.02."""
    table = nn.Parameter(torch.empty(1, n, dim))
    nn.init.trunc_normal_(table, std=0.02)
    return table


def cls_token(dim: int) -> nn.Parameter:
    """Zero-initialised CLS token (1, 1, D), as MBT's ``cls`` / ``clsspectrogram``."""
    return nn.Parameter(torch.zeros(1, 1, dim))


def layer_norm(dim: int) -> nn.LayerNorm:
    """The LayerNorm every block and the final encoder norm use (eps 1e-6, as ViT/MBT)."""
    return nn.LayerNorm(dim, eps=1e-6)


def drop_path_rate(cfg: BackboneConfig, layer: int) -> float:
    """MBT's stochastic-depth schedule: p_l = l / (L - 1) * drop_path."""
    return cfg.drop_path * layer / max(cfg.depth - 1, 1)


def make_blocks(cfg: BackboneConfig, n: int, start: int = 0) -> nn.ModuleList:
    """``n`` pre-LN ViT blocks for layers ``start .. start + n - 1``, JAX-ViT initialised (xavier-uniform).

    Args:
        cfg: the backbone.
        n: number of blocks.
        start: index of the first block in the full depth; sets its stochastic-depth rate.

    Returns:
        timm ``Block`` s; each takes ``(x, attn_mask=...)`` with a bool mask broadcastable to (B, heads, N, N).
    """
    blocks = nn.ModuleList(
        Block(
            cfg.embed_dim,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=partial(nn.GELU, approximate="tanh" if cfg.gelu == "tanh" else "none"),
            drop_path=drop_path_rate(cfg, start + i),
        )
        for i in range(n)
    )
    for block in blocks:
        for name, module in block.named_modules():
            init_weights_vit_jax(module, name)
        # timm falls back to an explicit softmax when TIMM_FUSED_ATTN=0 or in export mode; pin SDPA so that
        # masking, speed and FLOP counting take one path everywhere.
        block.attn.fused_attn = True
    return blocks
