"""Test helpers that ship with the harness, so that a plug-in's own CI can hold its methods to the same contract.

- :class:`MethodContract` (``harness.testing.contract``): the method contract as a pytest class; subclass it in a test
  file (``class TestMyMethods(MethodContract): methods = ("gmu",)``) and pytest runs every check on every listed
  method, with its defaults and each of its ``contract_variants``; ``precision = "bf16"`` runs it under autocast;
  :class:`CompileContract` holds a method to ``torch.compile`` (whole graphs, eager's outputs and gradients).
- tiny shapes and batches for method tests: :data:`TINY_BACKBONE`, :data:`TINY_SPEC`, :func:`make_batch`.
- :mod:`harness.testing.faults`: a training hook that makes a trial die mid-epoch (resume and retry tests).

``docs/plugins.md`` shows a plug-in package that uses them.
"""

from harness.testing.contract import (
    SWIN_BACKBONE,
    TINY_BACKBONE,
    TINY_SPEC,
    CompileContract,
    MethodContract,
    build,
    make_batch,
)

__all__ = ["SWIN_BACKBONE", "TINY_BACKBONE", "TINY_SPEC", "CompileContract", "MethodContract", "build", "make_batch"]
