"""Concatenation fusion: two independent ViT streams whose CLS embeddings are concatenated for the shared head.

Paper: the late-fusion (LF) baseline of Liang et al., "MultiBench: Multiscale Benchmarks for Multimodal
Representation Learning", NeurIPS 2021 Datasets and Benchmarks, https://arxiv.org/abs/2107.07502 (unimodal encoders,
their representations concatenated, one head on top).
Reference implementation: pliang279/MultiBench ``fusions/common_fusions.py`` (``Concat``).
Known differences: the encoders are the harness's per-modality ViT streams (late fusion's, ``ViTStreams``) read out
by their CLS after one shared final LayerNorm; an absent modality's half of the embedding is zero (``Concat`` has no
missing modalities). Against ``late``, which averages the two streams' *scores* under one head, the head here sees
both embeddings at once, so it can weigh the modalities per class (feature-level vs score-level late fusion).

    e = [CLS_v ‖ CLS_a]        # (B, 2D); CLS_m zeroed where modality m is absent

Shapes: ``B`` batch, ``N_m`` tokens of modality m (CLS included), ``D`` width, ``L`` layers.
"""

from __future__ import annotations

import torch

from harness.api import InputSpec, MethodConfig
from harness.models.backbones import BackboneConfig
from harness.models.blocks import ViTStreams


class Concat(ViTStreams):
    """Separate streams z_m <- Block_m(z_m) for l = 0..L-1; embedding = [CLS_v ‖ CLS_a] of width 2D."""

    Config = MethodConfig  # nothing to tune beyond the backbone
    token_outputs = True  # forward returns tokens (with_tokens)
    order = ("video", "audio")

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        self.embed_dim = 2 * backbone.embed_dim

    def forward(self, batch: dict) -> dict:
        z, present = self.unimodal(batch)  # m -> (B, 1 + N_m, D) after the final norm
        cls = [torch.where(present[m][:, None], z[m][:, 0], 0.0) for m in self.order]  # (B, D) each
        return self.with_tokens({"embedding": torch.cat(cls, dim=-1)}, z, present)  # embedding (B, 2D)
