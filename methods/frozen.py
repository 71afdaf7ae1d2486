"""frozen: the linear probe of LAVISH's frozen shared backbone (no adapter, no cross-modal flow).

Papers: the "frozen backbone" row of parameter-efficient transfer learning (e.g. Jia et al., "Visual Prompt
Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119, "Linear" rows), and LAVISH's own comparison point
(Lin et al., CVPR 2023, https://arxiv.org/abs/2212.07983): the same frozen shared ViT with the adapters removed. The
LAVISH author reports that removing LAVISH (all frozen) costs about 4 points on AVE [ISSUE GenjiB/LAVISH#11];
the paper's full table of baselines is not in a reachable source (``docs/methods.md``).
What LAVISH's comparison used: the frozen Swin-V2 / ViT with its AVE head (concatenated CLS -> 2 linears).
Differences here: the task's one shared head scores each modality's CLS and averages the logits (``per_modality``,
as every method of the harness); the LayerNorms train by default (``train_norms: true``, the author's ViT setting
``is_vit_ln=1``); ``train_norms: false`` is the strict linear probe, in which only the task's head trains.

    z_m <- Block_l(z_m)  for l < L, m in (a, v)          # each modality alone through the frozen blocks
    logits = mean_m Head(LN(z_m)[CLS])

Trainable: the head (the task's) + the 4 L + 2 LayerNorm affine vectors of width D when ``train_norms``.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

from pydantic import Field

from harness.models.shared_vit import FrozenBackbone, FrozenConfig


class FrozenProbeConfig(FrozenConfig):
    """The linear probe; only the LayerNorms are optional."""

    train_norms: bool = Field(
        True,
        description="train the backbone's LayerNorms (is_vit_ln, the LAVISH author's ViT setting); false = the "
        "strict linear probe, in which nothing of the encoder trains",
    )


class Frozen(FrozenBackbone):
    """The frozen shared ViT as it is; the task's head reads each modality's CLS."""

    Config = FrozenProbeConfig
    token_outputs = True  # forward returns tokens (with_tokens)
