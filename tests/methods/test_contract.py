"""The method contract (``harness.testing.contract``), run on every registered method and its declared variants."""

from __future__ import annotations

import pytest

from harness.registry import METHODS
from harness.testing import MethodContract


class TestContract(MethodContract):
    """Every registered method, built-in or plug-in, with its defaults and each of its ``contract_variants``."""


@pytest.mark.parametrize("name", [n for n in ("vanilla", "mbt") if n in METHODS])
def test_fusion_layer_range_is_checked(name, backbone):
    cfg = METHODS.get(name).Config(name=name, fusion_layer=13)
    assert cfg.check(backbone) == [
        (
            "method.fusion_layer",
            "13 is out of range: must be in [0, 3] (0 = early fusion, 3 = late fusion; the backbone has depth 3)",
        )
    ]
    for lf in (0, backbone.depth):
        assert METHODS.get(name).Config(name=name, fusion_layer=lf).check(backbone) == []
