"""AVISH: LAVISH without latent tokens; each adapter's tokens attend directly over all of the other modality's tokens.

Paper: the latent-free ablation of Lin et al., "Vision Transformers are Parameter-Efficient Audio-Visual Learners",
CVPR 2023, https://arxiv.org/abs/2212.07983 (the adapter without its latent-token compression).
Reference implementation: GenjiB/LAVISH ``AVE/nets/net_trans_v2.py``, the commented-out "no MBT cross-modal
attention" path of ``VisualAdapter``.
Known differences: those of ``methods/lavish.py`` (same backbone, tokenisation, positions, bottleneck, gates and
read-out); the code here is LAVISH's with m = 0 (``methods/parts/lavish_adapter.py``).

The cross-modal step of each adapter, X the adapted modality's tokens, Y the other's (no projections, no scaling):
    X^ = X + g_av * softmax(X Y^T) Y        # O(N M D) per adapter, against LAVISH's O((N + M) m D)
The rest of the adapter, the 4 positions per block and the read-out are LAVISH's. Parameters: LAVISH's minus the
m * D latent tokens of each of the 4 L adapters.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

from typing import ClassVar

from methods.lavish import LAVISH
from methods.parts.lavish_adapter import AdapterConfig


class AVISHConfig(AdapterConfig):
    """LAVISH's adapter flags without the latent tokens (no ``latent_tokens``, no ``latent_init``)."""

    families: ClassVar[tuple[str, ...]] = ("vit", "swinv2")


class AVISH(LAVISH):
    """LAVISH with direct audio <-> video attention in every adapter (``AVISHConfig.latent()`` gives m = 0)."""

    Config = AVISHConfig
    contract_variants = ({"audio_embed": "spectrogram", "train_norms": True}, {"backbone": "swinv2"})
