"""adapter: bottleneck adapters at LAVISH's positions on its frozen shared ViT, with no cross-modal attention.

Papers: Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, https://arxiv.org/abs/1902.00751
(a bottleneck D -> D/r -> D after the attention and after the FFN of every block, near-identity at init); its
parallel form (He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022,
https://arxiv.org/abs/2110.04366), which is where LAVISH puts its adapters. LAVISH (Lin et al., CVPR 2023,
https://arxiv.org/abs/2212.07983) compares against such a unimodal adapter on the same frozen backbone; its numbers
are not in a reachable source (``docs/methods.md``). Its code has the baseline as ``VisualAdapter(is_multimodal=0)``:
the same bottleneck without the latent-token cross-modal attention.
What this follows: LAVISH's adapter with the cross-modal step removed (``is_multimodal=0``), at LAVISH's 4 positions
per block (audio and video, beside the MHSA and beside the FFN), with all of LAVISH's adapter flags (``reduction``,
``groups``, BN, LayerNorms, zero-initialised output gate; ``methods/parts/lavish_adapter.py``), so that the only
difference to ``lavish`` is the audio <-> video exchange. Each modality is adapted by its own adapters from its own
tokens only.
Differences: Houlsby's adapters are sequential (after each sub-layer), dense, without norms or gate, with near-zero
init; the AVE code's unimodal branch lacks the ReLU, the AVS / AVQA code's has it (kept here).

Update rule of block l, m in (a, v), as LAVISH's without its Y:
    z_m <- z_m + DropPath(Attn(LN1 z_m)) + A_{m,p1}(z_m)
    z_m <- z_m + DropPath(MLP(LN2 z_m)) + A_{m,p2}(z_m)
    A(x) = g * LN_post(BN(W_up ReLU(BN(W_down LN_before(x)))))          # g = 0 at init: the frozen backbone
Trainable: 4 L adapters + the head (+ the backbone's LayerNorms with ``train_norms``).

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers, ``r`` reduction.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig
from harness.models.shared_vit import FrozenBackbone
from methods.parts.lavish_adapter import AdapterConfig, LAVISHAdapter

POSITIONS = ("p1", "p2")  # beside the MHSA, beside the FFN


class BottleneckAdapterConfig(AdapterConfig):
    """LAVISH's adapter flags (defaults = the README's AVE flags); there is no latent token and no cross-attention."""


class BottleneckAdapter(LAVISHAdapter):
    """LAVISH's adapter with ``is_multimodal=0``: the gated bottleneck on the adapted tokens alone."""

    def __init__(self, dim: int, cfg: AdapterConfig, gated: bool):
        super().__init__(dim, cfg, latent_tokens=0, latent_init="rand", gated=gated)
        del self.gate_av  # no cross-modal term to gate

    def cross(self, x: Tensor, y: Tensor | None = None, y_keep: Tensor | None = None) -> Tensor:
        return x


class Adapter(FrozenBackbone):
    """The frozen shared ViT with a unimodal bottleneck adapter beside each sub-layer of each modality's stream."""

    Config = BottleneckAdapterConfig
    token_outputs = True  # forward returns tokens (with_tokens)

    def __init__(self, cfg: BottleneckAdapterConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        self.adapters = nn.ModuleDict(
            {
                f"{mod}_{pos}": nn.ModuleList(
                    BottleneckAdapter(backbone.embed_dim, cfg, gated=mod == "video" or cfg.gate_audio)
                    for _ in range(backbone.depth)
                )
                for pos in POSITIONS
                for mod in self.modalities
            }
        )

    def block(self, layer: int, z: dict[str, Tensor], own: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
        blk, out = self.blocks[layer], {}
        for m, x in z.items():
            res = self.adapters[f"{m}_p1"][layer](x, None, x_rows=present[m])
            x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x), attn_mask=own[m]))) + res
            res = self.adapters[f"{m}_p2"][layer](x, None, x_rows=present[m])
            out[m] = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))) + res
        return out
