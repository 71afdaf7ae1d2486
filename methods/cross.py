"""Modality-specific-parameter fusion ("cross"): per-modality weights, each stream attends over all tokens from Lf on.

Paper: Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021, §3.2 "fusion with modality-
specific parameters", https://arxiv.org/abs/2107.00135.
Reference implementation: google-research/scenic ``scenic/projects/mbt/model.py`` with ``share_encoder=False``,
``use_bottleneck=False`` (``get_context`` / ``combine_context``).
Known differences:
- An image-ViT checkpoint (``backbone.checkpoint``) initialises both streams as in MBT (``harness/models/weights.py``).
- ``readout='gap'`` is scenic's GAP model: no CLS tokens, the mean of the present modalities' tokens; an absent
  modality's placeholder tokens stay keys of its own stream (never of the other's). ``gap_cls``: the former GAP,
  CLS tokens kept as keys and left out of the pool.
- A missing modality's tokens (its CLS included) are never keys of the other stream; scenic always has both.
- Like scenic, each fusion layer runs Block_m over the full ``[context ‖ z_m]`` sequence and drops the context's
  outputs: two full-length passes per fusion layer, so the FLOPs are those of the reference, not of a
  queries-of-own-tokens-only kernel.
With one shared block this rule would be vanilla fusion (attention is permutation-equivariant), which is why
scenic's ``share_encoder=True, use_bottleneck=False`` is ``vanilla`` and this file always has weights per modality.

Update rule, l = 0..L-1 (Block_m: modality m's own block at layer l):
    l <  Lf:  z_m <- Block_m(z_m)
    l >= Lf:  z_m <- last |z_m| outputs of Block_m([z_other ‖ z_m])   # (B, 2 + Nv + Na, D) in, (B, 1 + N_m, D) kept
              for every m, all from the layer-l inputs (simultaneous update)
Lf = L is late fusion (same parameters, same outputs); Lf = 0 attends across from the first layer.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers, ``Lf`` fusion layer.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import InputSpec, MethodConfig, attn_mask, complete, keep_keys, present_masks
from harness.models.backbones import BackboneConfig
from harness.models.blocks import (
    MBTReadout,
    ViTStreams,
    check_fusion_layer,
    own_keys,
    own_masks,
    read_out,
    readout_field,
)


class CrossConfig(MethodConfig):
    """Where the streams start attending to each other and how they are read out."""

    fusion_layer: int = Field(
        0,
        description="Lf, first layer whose streams attend over both modalities; 0 = early fusion, "
        "L (backbone depth) = late fusion",
    )
    readout: MBTReadout = readout_field(gap_cls=True)

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        return check_fusion_layer(self.fusion_layer, backbone.depth)


class Cross(ViTStreams):
    """Per-modality blocks; from Lf on each stream's queries attend over [other modality ‖ own tokens]."""

    Config = CrossConfig
    token_outputs = True  # forward returns tokens (with_tokens)
    contract_variants = ({"readout": "gap"}, {"readout": "gap", "fusion_layer": 1}, {"readout": "gap_cls"},
                         {"fusion_layer": 1})  # fmt: skip

    def __init__(self, cfg: CrossConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec, cls_tokens=cfg.readout != "gap")

    def forward(self, batch: dict) -> dict:
        cfg: CrossConfig = self.cfg
        depth, lf = self.backbone.depth, cfg.fusion_layer
        present, full = present_masks(batch, self.modalities), complete(batch, self.modalities)
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D)
        own = {m: own_keys(present[m], x.shape[1], self.tokens.has_cls) for m, x in z.items()}  # m -> (B, N)
        z = self.streams(z, own_masks(own, full, self.tokens.has_cls), range(lf))

        if lf < depth:
            # As context, a modality's CLS is a key only when it is present: an absent modality adds no key at all.
            others = {m: [o for o in self.modalities if o != m] for m in self.modalities}
            masks = dict.fromkeys(z)  # every key present
            if not full:
                ctx = {m: keep_keys(present[m], x.shape[1] - 1, keep_cls=present[m]) for m, x in z.items()}
                masks = {m: attn_mask(torch.cat([*(ctx[o] for o in others[m]), own[m]], dim=1)) for m in z}
            for layer in range(lf, depth):
                new = {}
                for m, x in z.items():
                    seq = torch.cat([*(z[o] for o in others[m]), x], dim=1)  # (B, 2 + Nv + Na, D): context, then own
                    new[m] = self.streams.block(layer, m)(seq, attn_mask=masks[m])[:, -x.shape[1] :]  # (B, 1 + N_m, D)
                z = new  # every stream read the layer-l inputs

        z = {m: self.norm(x) for m, x in z.items()}
        return self.with_tokens(read_out(z, present, cfg.readout), z, present)
