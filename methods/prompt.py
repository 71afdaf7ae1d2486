"""prompt: deep visual prompt tuning (VPT-deep) of LAVISH's frozen shared ViT, prompts per layer and per modality.

Paper: Jia et al., "Visual Prompt Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119 (reference code
KMnP/vpt ``src/models/vit_prompt/vit.py``): p learnable tokens are inserted after the CLS at the input of every
block (VPT-deep); the block's outputs at the prompt positions are discarded and the next block gets fresh prompts.
Init: U(-v, v), v = sqrt(6 / (3 * patch area + D)) (xavier-uniform over the patch embedding's fan-in and D).
LAVISH (Lin et al., CVPR 2023, https://arxiv.org/abs/2212.07983) compares against prompt tuning on the same frozen
backbone; its configuration and numbers are not in a reachable source (``docs/methods.md``).
What this follows: VPT-deep on the harness's frozen shared ViT. The backbone is shared by the two modalities, so
each modality has prompts of its own at every layer (VPT adapts one image model to one task); each modality's
sequence sees only its own prompts, so nothing crosses between audio and video. The prompts are always attention
keys, also for a clip whose modality is absent (like its CLS). Differences: VPT's dropout on the prompt tokens
(0 or 0.1 in its search) is ``dropout`` here, default 0; VPT puts prompts before the patch tokens of a 1-CLS
sequence, as here; the patch area of the init is the video tubelet's (t p^2), which the audio shares.

    [c, _, E]_m <- Block_l([c, P_{m,l}, E]_m)       l < L, m in (a, v); P_{m,l}: (p, D) learnable
    logits = mean_m Head(LN(c_m))

Trainable: 2 L p D prompt values + the head (+ the backbone's LayerNorms with ``train_norms``).

Shapes: ``B`` batch, ``N_m`` tokens of modality m (CLS included), ``p`` prompts, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig
from harness.models.shared_vit import FrozenBackbone, FrozenConfig


class PromptConfig(FrozenConfig):
    """VPT-deep's prompt length and dropout; the backbone fields are the frozen one's."""

    prompt_tokens: int = Field(4, ge=1, description="p, prompt tokens per layer per modality (VPT searches 1-200)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the prompt tokens (VPT's search: 0, 0.1)")


class Prompt(FrozenBackbone):
    """The frozen shared ViT with p fresh learnable tokens per modality in front of the patches of every block."""

    Config = PromptConfig
    token_outputs = True  # forward returns tokens (with_tokens)

    def __init__(self, cfg: PromptConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        d, p = backbone.embed_dim, cfg.prompt_tokens
        bound = math.sqrt(6.0 / (3 * backbone.tubelet * backbone.patch_size**2 + d))
        self.prompts = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(backbone.depth, p, d).uniform_(-bound, bound)) for m in self.modalities}
        )  # m -> (L, p, D)

    def block(self, layer: int, z: dict[str, Tensor], own: dict[str, Tensor], present: dict[str, Tensor]) -> dict:
        blk, p, out = self.blocks[layer], self.cfg.prompt_tokens, {}
        for m, x in z.items():
            # functional dropout: a module fed a view of a parameter breaks FlopCounterMode's hooks under no_grad
            prompts = F.dropout(self.prompts[m][layer], self.cfg.dropout, self.training)
            prompts = prompts.expand(x.shape[0], -1, -1)  # (B, p, D)
            keys = own[m]  # (B, 1, 1, N_m): [CLS, patches]; None: every key present
            if keys is not None:
                keys = torch.cat([keys[..., :1], keys[..., :1].new_ones(keys.shape[:-1] + (p,)), keys[..., 1:]], -1)
            y = blk(torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1), attn_mask=keys)  # (B, N_m + p, D)
            out[m] = torch.cat([y[:, :1], y[:, 1 + p :]], dim=1)  # the prompts' outputs are discarded
        return out
