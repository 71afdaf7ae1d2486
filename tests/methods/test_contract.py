"""The method contract (``harness.testing.contract``), run on every registered method and its declared variants."""

from __future__ import annotations

import pytest

from harness.registry import METHODS
from harness.testing import MethodContract
from harness.testing.contract import CompileContract, case_id, cases


class TestContract(MethodContract):
    """Every registered method, built-in or plug-in, with its defaults and each of its ``contract_variants``."""


def _default_suite(names: tuple[str, ...] = ()):
    """``pytest_generate_tests`` over :func:`cases` in which only the methods ``names`` (every one when empty) with
    their default options run by default; the rest is marked slow (``-m slow``)."""

    def generate(self, metafunc) -> None:
        if {"name", "overrides"} <= set(metafunc.fixturenames):
            fast = lambda n, o: not o and (not names or n in names)  # noqa: E731
            params = [pytest.param(n, o, id=case_id(n, o), marks=() if fast(n, o) else (pytest.mark.slow,))
                      for n, o in cases()]  # fmt: skip
            metafunc.parametrize("name,overrides", params)

    return generate


class TestContractBF16(MethodContract):
    """The contract with each forward under bf16 autocast (``train.precision: bf16``). bf16 on this CPU is slow:
    every method's defaults by default, its variants with ``-m slow``."""

    precision = "bf16"
    pytest_generate_tests = _default_suite()


class TestCompiled(CompileContract):
    """torch.compile (``train.compile``) of every method, whole graphs, eager's outputs and gradients. Dynamo's
    tracing takes 10-100 s per method on 2 cores: MBT and LAVISH by default, every method with ``-m slow``."""

    pytest_generate_tests = _default_suite(("mbt", "lavish"))


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
