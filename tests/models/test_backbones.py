"""Backbone options that follow an official code: the GELU of the ViT blocks (scenic's flax ``nn.gelu``)."""

from __future__ import annotations

import math

import torch

from harness.models.backbones import BackboneConfig, make_blocks
from harness.testing import TINY_BACKBONE


def flax_gelu(x: torch.Tensor) -> torch.Tensor:
    """flax ``nn.gelu`` (``approximate=True``, its default, which scenic's MlpBlock uses), written out."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_tanh_gelu_is_scenics_and_exact_is_the_default():
    x = torch.linspace(-4, 4, 101)
    tanh = make_blocks(BackboneConfig(**TINY_BACKBONE, gelu="tanh"), 1)[0].mlp.act
    torch.testing.assert_close(tanh(x), flax_gelu(x), rtol=0, atol=1e-6)
    exact = make_blocks(BackboneConfig(**TINY_BACKBONE), 1)[0].mlp.act
    torch.testing.assert_close(exact(x), x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), rtol=0, atol=1e-6)
    assert (exact(x) - tanh(x)).abs().max() > 1e-4  # the two differ
