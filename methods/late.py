"""Late fusion: two independent ViT streams, combined only at the read-out.

Paper: MBT's late-fusion baseline (Lf = L), Nagrani et al., "Attention Bottlenecks for Multimodal Fusion",
NeurIPS 2021, https://arxiv.org/abs/2107.00135.
Reference implementation: google-research/scenic ``scenic/projects/mbt/model.py`` with ``fusion_layer=12``
(the config comment: per-modality CLS tokens are combined only at the end).
Known differences: none in the encoder. Each modality has its own weights in every layer (``share_encoder=False``),
there is no cross-modal attention anywhere, and the read-out is MBT's ``classifier='token'``: per-modality CLS after
one shared final LayerNorm, averaged over the present modalities. An image-ViT ``backbone.checkpoint`` initialises
both streams as in MBT (``harness/models/weights.py``; the unimodal baselines inherit it).

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

from harness.api import MethodConfig
from harness.models.blocks import ViTStreams, readout_cls


class Late(ViTStreams):
    """Separate streams z_m <- Block_m(z_m) for l = 0..L-1; embedding = mean over present m of CLS_m.

    Late fusion has nothing to tune beyond the backbone: its config is the base ``MethodConfig``.
    """

    Config = MethodConfig
    token_outputs = True  # forward returns tokens (with_tokens)

    def forward(self, batch: dict) -> dict:
        z, present = self.unimodal(batch)  # m -> (B, 1 + N_m, D) after the final norm
        return self.with_tokens(readout_cls(z, present), z, present)
