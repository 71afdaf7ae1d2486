"""Vanilla self-attention fusion: one shared ViT, modalities concatenated into one sequence from layer Lf on.

Paper: Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021, §3.2 "vanilla self-attention",
https://arxiv.org/abs/2107.00135.
Reference implementation: google-research/scenic ``scenic/projects/mbt/model.py`` with ``share_encoder=True``,
``use_bottleneck=False``.
Known differences: an image-ViT checkpoint (``backbone.checkpoint``) initialises the shared stack as in MBT
(``harness/models/weights.py``: blocks copied, central-frame tubelets, resized/tiled positional tables).
``readout='gap'`` is scenic's GAP model: no CLS tokens at all, the mean of the present modalities' tokens (checked
against scenic's rule written out, ``tests/methods/test_equations.py``); an absent modality's placeholder tokens
stay keys of their own sequence below Lf, so no attention row is empty, and are never keys of the joint sequence
nor pooled. ``gap_cls`` is the harness's former GAP: CLS tokens kept as keys, left out of the pool.
Weights: MBT's vanilla fusion is defined with one shared stack only (scenic ``share_encoder=True``). Neither the
paper nor scenic defines a vanilla fusion with separate weights: scenic's ``share_encoder=False`` without
bottlenecks is the modality-specific-parameter rule (each modality's own block over [other ‖ own] tokens), which
is the ``cross`` method. ``shared_weights`` therefore accepts only True and points to ``cross`` otherwise.

Update rule, l = 0..L-1:
    l <  Lf:  z_m <- Block_l(z_m) for each m (same weights for both modalities)
    l == Lf:  z = [z_video ‖ z_audio]              # (B, 2 + Nv + Na, D)
    l >= Lf:  z <- Block_l(z)                      # every token attends to every present token

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers, ``Lf`` fusion layer.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import InputSpec, MethodConfig, attn_mask, complete, present_masks
from harness.models.backbones import BackboneConfig
from harness.models.blocks import (
    MBTReadout,
    ViTStreams,
    check_fusion_layer,
    joint_keys,
    own_keys,
    own_masks,
    read_out,
    readout_field,
)

# Why vanilla has no per-modality weights (the config check and the constructor say the same).
SEPARATE_WEIGHTS = (
    "false is not defined for vanilla fusion (MBT's vanilla shares one stack); for per-modality weights that "
    "attend over both modalities use method.name=cross"
)


class VanillaConfig(MethodConfig):
    """Where the joint sequence starts and how it is read out."""

    fusion_layer: int = Field(
        0, description="Lf, first layer over the joint sequence; 0 = early fusion, L (backbone depth) = late fusion"
    )
    readout: MBTReadout = readout_field(gap_cls=True)
    shared_weights: bool = Field(
        True,
        description="one block stack for both modalities (scenic share_encoder=True); False is not a vanilla "
        "variant in MBT: per-modality weights with attention over both modalities is method.name=cross",
    )

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        errors = check_fusion_layer(self.fusion_layer, backbone.depth)
        if not self.shared_weights:
            errors.append(("method.shared_weights", SEPARATE_WEIGHTS))
        return errors


class Vanilla(ViTStreams):
    """Shared blocks; per-modality passes below Lf, one joint sequence from Lf on."""

    Config = VanillaConfig
    token_outputs = True  # forward returns tokens (with_tokens)
    contract_variants = ({"readout": "gap"}, {"readout": "gap", "fusion_layer": 2}, {"readout": "gap_cls"},
                         {"fusion_layer": 1})  # fmt: skip
    # Concatenation order of the joint sequence: MBT's z = [z_rgb ‖ z_spec].
    order = ("video", "audio")

    def __init__(self, cfg: VanillaConfig, backbone: BackboneConfig, spec: InputSpec):
        if not cfg.shared_weights:
            raise ValueError(f"method.shared_weights={cfg.shared_weights}: {SEPARATE_WEIGHTS}")
        super().__init__(cfg, backbone, spec, shared_weights=True, cls_tokens=cfg.readout != "gap")

    def forward(self, batch: dict) -> dict:
        cfg: VanillaConfig = self.cfg
        depth, lf = self.backbone.depth, cfg.fusion_layer
        present, full = present_masks(batch, self.order), complete(batch, self.order)
        cls = self.tokens.has_cls
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D); (B, N_m, D) without CLS tokens (gap)
        own = {m: own_keys(present[m], x.shape[1], cls) for m, x in z.items()}  # m -> (B, N)
        z = self.streams(z, own_masks(own, full, cls), range(lf))

        if lf < depth:
            # In the joint sequence only a present modality's tokens (its CLS included) are keys; a clip with neither
            # present keeps the CLS keys (without CLS tokens: all), so no attention row is empty. None: all present.
            mask = None if full else attn_mask(joint_keys(present, {m: z[m] for m in self.order}, cls))
            sizes = [z[m].shape[1] for m in self.order]
            joint = torch.cat([z[m] for m in self.order], dim=1)  # (B, 2 + Nv + Na, D)
            for layer in range(lf, depth):
                joint = self.streams.block(layer)(joint, attn_mask=mask)
            z = dict(zip(self.order, joint.split(sizes, dim=1)))  # m -> (B, 1 + N_m, D)

        z = {m: self.norm(x) for m, x in z.items()}
        return self.with_tokens(read_out(z, present, cfg.readout), z, present)
