"""MBT: attention bottlenecks, the only route between the modality streams from layer Lf on.

Paper: Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021, https://arxiv.org/abs/2107.00135.
Reference implementation: google-research/scenic ``scenic/projects/mbt/model.py`` (``use_bottleneck=True``).
Known differences:
- scenic allocates Nb + 1 bottleneck tokens when ``classifier='token'``; here there are exactly
  ``bottleneck_tokens`` in both read-outs.
- Initialisation from an image ViT (``backbone.checkpoint``, ``harness/models/weights.py``): blocks into both streams
  (or the shared stack), central-frame tubelets, resized/tiled positional tables, the RGB kernel summed to 1 channel for
  the spectrogram, as scenic ``model_utils.py``. scenic also overwrites the bottlenecks with the resized positional
  grid on every checkpoint load; here that is ``bottleneck_init: pos`` and the default keeps their normal(0.02)
  init (the paper does not mention it).
- ``readout='gap'`` is scenic's GAP model: no CLS tokens, the mean of the present modalities' tokens (bottlenecks
  excluded); an absent modality's placeholder tokens stay keys of its own stream. ``gap_cls``: the former GAP, CLS
  tokens kept as keys and left out of the pool.
- A missing modality's bottleneck update is left out of the mean (scenic always has both modalities).

Update rule, l = 0..L-1 (Block_m: modality m's block, or one shared block when ``shared_weights``):
    l <  Lf:  z_m <- Block_m(z_m)
    l >= Lf:  [z_m ‖ b_m] = Block_m([z_m ‖ b])     # (B, 1 + N_m + Nb, D), for each m, from the same b
              b <- mean over present m of b_m      # (B, Nb, D)
Read-out: CLS_m after one shared LayerNorm; bottleneck tokens never reach it. A bottleneck written at layer l is
first read at layer l + 1, so information crosses modalities only when Lf <= L - 2 (Lf = L - 1 equals late fusion
in its outputs, at the cost of the bottleneck tokens).

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``Nb`` bottlenecks, ``D`` width, ``L`` layers,
``Lf`` fusion layer.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from harness.api import InputSpec, MethodConfig, attn_mask, complete, mean_over_modalities, present_masks
from harness.models.backbones import BackboneConfig
from harness.models.blocks import MBTReadout, ViTStreams, check_fusion_layer, own_keys, read_out, readout_field
from harness.models.weights import ImageViT, Mapping, bottleneck_factors, bottleneck_pos


class MBTConfig(MethodConfig):
    """Where the bottlenecks start, how many, and how the streams are read out."""

    fusion_layer: int = Field(
        2,
        description="Lf, first layer with bottlenecks; 0 = early fusion, L (backbone depth) = late fusion; "
        "scenic's AS-mini config uses 8 of 12",
    )
    bottleneck_tokens: int = Field(4, ge=1, description="Nb, shared bottleneck tokens (MBT's default is 4)")
    shared_weights: bool = Field(
        False, description="one block stack for both modalities (scenic share_encoder); False = weights per modality"
    )
    readout: MBTReadout = readout_field(gap_cls=True)
    test_with_bottlenecks: bool = Field(
        True, description="False: in eval mode every layer runs unimodally, with no cross-modal exchange"
    )
    bottleneck_init: Literal["normal", "pos"] = Field(
        "normal",
        description="normal: N(0, 0.02); pos: from the checkpoint's positional grid resized to an int(sqrt(Nb)) x "
        "(Nb // that) grid when backbone.checkpoint is loaded (scenic's behaviour)",
    )

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        errors = check_fusion_layer(self.fusion_layer, backbone.depth)
        if self.bottleneck_init == "pos":
            if backbone.checkpoint is None:
                errors.append(("method.bottleneck_init", "pos needs backbone.checkpoint (the grid comes from it)"))
            if bottleneck_factors(self.bottleneck_tokens) is None:
                errors.append(
                    (
                        "method.bottleneck_init",
                        f"pos needs bottleneck_tokens that fill an int(sqrt(Nb)) x k grid (scenic); "
                        f"{self.bottleneck_tokens} does not (4, 6, 8, 9, 12, 16 do)",
                    )
                )
        return errors


class MBT(ViTStreams):
    """Per-modality streams that exchange information only through Nb shared bottleneck tokens."""

    Config = MBTConfig
    token_outputs = True  # forward returns tokens (with_tokens)
    contract_variants = ({"readout": "gap"}, {"readout": "gap_cls"}, {"shared_weights": True},
                         {"fusion_layer": 0, "bottleneck_tokens": 1, "readout": "gap"})  # fmt: skip

    def __init__(self, cfg: MBTConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec, shared_weights=cfg.shared_weights, cls_tokens=cfg.readout != "gap")
        # Only allocated when used, so that Lf = L has exactly late fusion's parameters.
        self.bottleneck = None
        if cfg.fusion_layer < backbone.depth:
            self.bottleneck = nn.Parameter(torch.empty(1, cfg.bottleneck_tokens, backbone.embed_dim))
            nn.init.normal_(self.bottleneck, std=0.02)

    def backbone_mapping(self, vit: ImageViT) -> Mapping:
        """The two-stream mapping, plus the bottlenecks from the resized grid when ``bottleneck_init: pos``."""
        out = super().backbone_mapping(vit)
        if self.bottleneck is not None and self.cfg.bottleneck_init == "pos":
            out["bottleneck"] = (bottleneck_pos(vit, self.bottleneck.shape[1]), "pos_embed (resized to Nb)")
        return out

    def forward(self, batch: dict) -> dict:
        cfg: MBTConfig = self.cfg
        depth = self.backbone.depth
        fuse = self.bottleneck is not None and (self.training or cfg.test_with_bottlenecks)
        lf = cfg.fusion_layer if fuse else depth
        present, full = present_masks(batch, self.modalities), complete(batch, self.modalities)
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D)
        cls = self.tokens.has_cls
        # None: every key of the stream is a key (a complete batch; or no CLS tokens, scenic's GAP model)
        keep = {m: None if full or not cls else own_keys(present[m], x.shape[1]) for m, x in z.items()}  # (B, N)
        z = self.streams(z, {m: None if k is None else attn_mask(k) for m, k in keep.items()}, range(lf))

        if fuse:
            b = self.bottleneck.expand(next(iter(z.values())).shape[0], -1, -1)  # (B, Nb, D)
            nb = b.shape[1]
            masks = {m: None if k is None else attn_mask(torch.cat([k, k.new_ones(k.shape[0], nb)], dim=1))
                     for m, k in keep.items()}  # fmt: skip
            for layer in range(lf, depth):
                b_new = {}
                for m in z:
                    y = self.streams.block(layer, m)(torch.cat([z[m], b], dim=1), attn_mask=masks[m])
                    z[m], b_new[m] = y[:, :-nb], y[:, -nb:]  # (B, 1 + N_m, D), (B, Nb, D)
                b = mean_over_modalities(b_new, present)  # (B, Nb, D)

        z = {m: self.norm(x) for m, x in z.items()}
        return self.with_tokens(read_out(z, present, cfg.readout), z, present)
