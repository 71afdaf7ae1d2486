"""GMU: gated multimodal unit over the per-modality CLS embeddings of two independent ViT streams.

Paper: Arevalo, Solorio, Montes-y-Gómez, González, "Gated Multimodal Units for Information Fusion", ICLR 2017
workshop, https://arxiv.org/abs/1702.01992 (Eq. 1-4, the bimodal unit).
Reference implementation: johnarevalo/gmu-mmimdb (Theano); not ported, the equations are the paper's (no biases).
Known differences: the unimodal features are the CLS tokens of the harness's per-modality ViT streams (late fusion's
encoder, ``harness.models.blocks.ViTStreams``) after their shared final LayerNorm, not the paper's fixed text and
image features; a clip that misses one modality takes the present one's branch (gate forced to 0 or 1).

Equations, x_v / x_a the video / audio CLS embeddings (B, D):
    h_v = tanh(W_v x_v),  h_a = tanh(W_a x_a)
    z   = sigmoid(W_z [x_v ‖ x_a])                       # (B, D), per feature
    h   = z * h_v + (1 - z) * h_a                          # the embedding the task's head scores

Shapes: ``B`` batch, ``N_m`` tokens of modality m (CLS included), ``D`` width, ``L`` layers.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.api import InputSpec, MethodConfig
from harness.models.backbones import BackboneConfig
from harness.models.blocks import ViTStreams


class GMU(ViTStreams):
    """Gated multimodal unit on late fusion's two streams."""

    Config = MethodConfig  # nothing to tune beyond the backbone
    order = ("video", "audio")

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        d = backbone.embed_dim
        self.hidden = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in self.order})  # W_v, W_a
        self.gate = nn.Linear(2 * d, d, bias=False)  # W_z

    def forward(self, batch: dict) -> dict:
        z, present = self.unimodal(batch)  # m -> (B, 1 + N_m, D): each stream alone, then the final norm
        x = {m: t[:, 0] for m, t in z.items()}  # CLS, m -> (B, D)
        h = {m: torch.tanh(self.hidden[m](x[m])) for m in self.order}
        gate = torch.sigmoid(self.gate(torch.cat([x["video"], x["audio"]], dim=-1)))  # (B, D)
        only_video = (present["video"] & ~present["audio"])[:, None]
        only_audio = (present["audio"] & ~present["video"])[:, None]
        gate = torch.where(only_video, 1.0, torch.where(only_audio, 0.0, gate))
        return {"embedding": gate * h["video"] + (1 - gate) * h["audio"]}
