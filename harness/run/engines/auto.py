"""``engine: auto``, the one place where the engine of a machine is chosen: ``deepspeed`` with CUDA, else ``torch``."""

from __future__ import annotations

from harness.api import Engine
from harness.config import RunSpec
from harness.registry import ENGINES
from harness.run.engines.deepspeed_engine import DeepSpeedConfig


def choose_engine(name: str) -> str:
    """The registered engine that ``engine.name`` stands for: ``auto`` is ``deepspeed`` with CUDA, else ``torch``."""
    if name != "auto":
        return name
    import torch

    return "deepspeed" if torch.cuda.is_available() else "torch"


class AutoEngine(Engine):
    """``engine: auto``: builds the engine that :func:`choose_engine` picks on this machine.

    Takes the ``deepspeed`` settings (``workers``, ``zero_stage``, ...); they apply only when it picks ``deepspeed``.
    """

    Config = DeepSpeedConfig

    @classmethod
    def build(cls, spec: RunSpec) -> Engine:
        return ENGINES.get(choose_engine(spec.engine.name)).build(spec)
