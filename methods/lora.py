"""lora: low-rank updates of the attention projections of LAVISH's frozen shared ViT (peft's LoRA on timm blocks).

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, https://arxiv.org/abs/2106.09685:
a frozen linear W0 gets a trainable parallel update, h = W0 x + (alpha / r) B A x, A (r x in) random, B (out x r)
zero-initialised, so the model starts as the pretrained one; the paper adapts Wq and Wv of every attention layer.
LAVISH (Lin et al., CVPR 2023, https://arxiv.org/abs/2212.07983) compares against LoRA on the same frozen backbone;
its numbers are not in a reachable source (``docs/methods.md``). Its code's hook (commented out in ``net_trans_v2.py``)
is different: a ``loralib.Linear(D, D, r=Adapter_downsample)`` *beside* each sub-layer in place of each adapter,
with its own zero-initialised gates, i.e. a rank-r residual branch rather than an update of the attention weights.
What this follows: the LoRA paper's form, implemented with ``peft`` (``LoraConfig`` + ``inject_adapter_in_model``
on the timm blocks), on ``targets`` (default the attention's ``qkv`` and ``proj``), shared by both modalities as
the backbone is. Difference from the paper: timm fuses Wq, Wk, Wv into one ``qkv`` linear (D -> 3D), so one LoRA
pair (A: r x D, B: 3D x r) adapts the three jointly with a rank-r update of the stacked [Wq; Wk; Wv] (peft#691),
where the paper gives Wq and Wv a rank-r pair each and leaves Wk alone.

    W <- W0 + (alpha / r) B A       for W in the targets of every block (frozen W0; B = 0 at init)
    z_m <- Block_l(z_m; W)          m in (a, v), each modality alone; logits = mean_m Head(LN(z_m)[CLS])

Trainable: r (in + out) per targeted linear of every block (qkv: 4 r D, proj: 2 r D) + the head (+ the backbone's
LayerNorms with ``train_norms``). The frozen weights keep their keys under peft's ``<linear>.base_layer``.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers, ``r`` rank.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig
from harness.models.shared_vit import FrozenBackbone, FrozenConfig

# timm Block's linears, by the short name a config uses.
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


class LoRAConfig(FrozenConfig):
    """LoRA's rank, scale and targets; the backbone fields (``train_norms``, ``audio_embed``) are the frozen one's."""

    rank: int = Field(8, ge=1, description="r, the rank of each update B A (the LAVISH code's LoRA uses r = 8)")
    alpha: float = Field(8.0, gt=0, description="the update is scaled by alpha / r (alpha = r: scale 1)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch's input (lora_dropout)")
    targets: list[Literal["qkv", "proj", "fc1", "fc2"]] = Field(
        ["qkv", "proj"],
        min_length=1,
        description="linears of every block to adapt: qkv (fused Wq, Wk, Wv), proj (attention output), fc1, fc2",
    )


class LoRA(FrozenBackbone):
    """The frozen shared ViT whose targeted linears carry peft LoRA updates; the blocks are otherwise unchanged."""

    Config = LoRAConfig
    token_outputs = True  # forward returns tokens (with_tokens)

    def __init__(self, cfg: LoRAConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        # peft imports transformers (only when a LoRA is built) and torchaudio, whose module-level tensors must be
        # made on the CPU even when this runs under torch.device("meta") (harness profile, the no-sync tests)
        with torch.device("cpu"):
            from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=[TARGETS[t] for t in cfg.targets],
            bias="none",
        )
        # peft marks everything but its adapters as frozen in the module it injects into: the blocks only, so
        # that the LayerNorms of train_norms are set again below and nothing outside the blocks is touched.
        self.blocks = inject_adapter_in_model(lora, self.blocks)
        if cfg.train_norms:
            for module in self.blocks.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
