"""Unimodal baselines: one ViT stream over audio only or video only.

Paper: MBT's single-modality rows ("MBT (A)", "MBT (V)"), Nagrani et al., "Attention Bottlenecks for Multimodal
Fusion", NeurIPS 2021, https://arxiv.org/abs/2107.00135.
Reference implementation: google-research/scenic ``scenic/projects/mbt/model.py`` with one entry in
``modality_fusion``.
Known differences: none in the encoder; read-out is the stream's CLS after the final LayerNorm
(``classifier='token'``). When the modality is absent from a clip, its patch tokens are masked out and the
embedding is the CLS output alone, which depends on learned parameters only.

Shapes: ``B`` batch, ``N`` tokens of the one stream, ``D`` width, ``L`` layers.
"""

from __future__ import annotations

from methods.late import Late


class AudioOnly(Late):
    """One stream over the spectrogram: z <- Block(z) for l = 0..L-1; embedding = CLS."""

    modalities = ("audio",)


class VideoOnly(Late):
    """One stream over the frames: z <- Block(z) for l = 0..L-1; embedding = CLS."""

    modalities = ("video",)
