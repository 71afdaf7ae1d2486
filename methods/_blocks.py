"""Pieces two or more methods share: per-modality tokenisers, per-modality block stacks, the final norm.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio patch tokens, ``D`` width, ``L`` depth.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.backbones import (
    AudioPatchEmbed,
    BackboneConfig,
    VideoPatchEmbed,
    cls_token,
    make_blocks,
    num_audio_tokens,
    num_video_tokens,
    pos_table,
    time_slots,
)
from harness.data.base import InputSpec


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

    def forward(self, batch: dict, present: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for m, embed in self.patch.items():
            x = batch[m]
            # An absent clip may carry any placeholder (even NaN); masked keys still multiply their values by 0,
            # so the input is replaced, not scaled.
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

    def forward(self, z: dict[str, Tensor], masks: dict[str, Tensor], layers: range) -> dict[str, Tensor]:
        """Runs each modality through its own blocks, z_m <- Block_m(z_m), for ``layers``.

        Args:
            z: ``{modality: (B, N_m, D)}``.
            masks: ``{modality: (B, 1, 1, N_m)}`` bool key masks.
            layers: the layer indices to run.
        """
        z = dict(z)
        for layer in layers:
            for m in z:
                z[m] = self.block(layer, m)(z[m], attn_mask=masks[m])
        return z
