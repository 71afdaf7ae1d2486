"""Training engines (``torch``, ``deepspeed``) and ``auto``, the one place where the engine of a machine is chosen."""

from __future__ import annotations

from typing import Any

from harness.engines.deepspeed_engine import DeepSpeedConfig


def choose_engine(name: str) -> str:
    """The registered engine that ``engine.name`` stands for: ``auto`` is ``deepspeed`` with CUDA, else ``torch``."""
    if name != "auto":
        return name
    import torch

    return "deepspeed" if torch.cuda.is_available() else "torch"


class AutoEngine:
    """``engine: auto``: builds the engine that :func:`choose_engine` picks on this machine.

    Takes the ``deepspeed`` settings (``workers``, ``zero_stage``, ...); they apply only when it picks ``deepspeed``.
    """

    Config = DeepSpeedConfig

    def __new__(cls, spec: Any) -> Any:  # noqa: D102 - returns an instance of the chosen engine
        from harness.registry import ENGINES

        return ENGINES.get(choose_engine(spec.engine.name))(spec)
