"""Token-level access to a method, for tasks that train on its token sequences (``av_pretrain``).

A method that implements :class:`TokenSequences` splits its forward in two: the front ends' token embeddings
(``family: cnn``: one per short clip, AVBERT's CNN embeddings) and the transformers over them. A self-supervised task
can then mask or re-pair the embeddings (masked embedding prediction, correct pair prediction) and read every
stream's outputs, while ``forward`` (both parts, unchanged input) also returns the embeddings as
``out["front_tokens"]`` (``out["tokens"]`` are the final sequences, ``harness.api.token_outputs``), so the front ends
run once per step.

Shapes: ``B`` batch, ``N_m`` tokens of modality m (``K`` clips for a cnn backbone), ``D`` width.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class TokenSequences(Protocol):
    """What ``harness.tasks.av_pretrain`` needs of a method (``methods/lowrank.py`` implements it)."""

    def encode_tokens(self, tokens: dict[str, Tensor], present: dict[str, Tensor],
                      full: bool = False) -> dict[str, dict[str, Tensor]]:  # fmt: skip
        """The transformers over front-end embeddings ``{m: (B, N_m, D)}`` (CLS / BOS and positions added inside);
        ``full``: every clip has every modality, so no key mask is needed (``harness.api.complete``).

        Returns:
            ``{"unimodal": {m: (B, 1 + N_m, D)}, "multimodal": {m: (B, 1 + N_m, D)}}``, the outputs of each stream
            the method runs (a fusion stage without unimodal or without multimodal encoders leaves that entry
            empty); position 0 is the modality's CLS / BOS token.
        """
        ...
