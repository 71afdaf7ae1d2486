"""Speed on the hardware: the run's precision, TF32, activation checkpointing, host-side step timing, and MFU.

- **Precision** (``train.precision``): ``auto`` is bf16 autocast on a GPU that has bf16 and fp32 elsewhere (a CPU
  without bf16 instructions runs bf16 ~20x slower than fp32); ``bf16`` / ``fp16`` are autocast around forward and
  loss, the weights and the optimiser in fp32 (fp16 adds ``torch.amp.GradScaler``). On CUDA fp32 matmuls use TF32.
- **Activation checkpointing** (``train.activation_checkpointing``): every timm ``Attention`` / ``Mlp`` (and
  Swin-V2's window attention) recomputes its forward in the backward pass instead of keeping its activations.
- **Step timing** (:class:`StepClock`): the time the loop waits for its next batch (input-bound or not) and the
  interval between completed steps, from host clocks only; no extra device sync.
- **MFU** (``perf/mfu``): training FLOPs per clip (forward + backward, counted once on the meta device:
  ``model/train_gflops``) x clips per second / the device's peak at the run's precision (:data:`PEAK_TFLOPS`,
  dense, NVIDIA's data sheets; ``train.peak_tflops`` overrides it). fp32 counts the TF32 peak, the one the matmuls
  run at.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import types
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# Dense (no sparsity) peak TFLOP/s by precision, matched in order against torch.cuda.get_device_name.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),  # SXM5 (80GB HBM3)
    ("H200 NVL", {"bf16": 835.5, "fp16": 835.5, "fp32": 417.5}),
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),  # SXM
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    ("A10G", {}),  # AWS's variant of the A10: no published figures, give train.peak_tflops
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 and no TF32
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: ``auto`` -> bf16 on a CUDA device with bf16, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to the (resolved) precision's dtype around a forward and its loss; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls on TF32 tensor cores (CUDA only; the process's setting: every trial on a GPU wants it)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def peak_tflops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """The device's dense peak TFLOP/s at ``precision``: ``override``, else :data:`PEAK_TFLOPS`; None when unknown
    (a CPU, an unlisted GPU, a precision the GPU lacks)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(precision) for key, peaks in PEAK_TFLOPS if key in name), None)


def mfu(train_gflops: float, samples_per_s: float, peak: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: ``train_gflops`` per clip x clips/s over ``devices`` x ``peak`` TFLOP/s, in [0, 1]."""
    return train_gflops * 1e9 * samples_per_s / (peak * 1e12 * devices)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpoint_activations(model: nn.Module) -> int:
    """Make every attention and MLP of ``model`` recompute its forward in backward; returns how many.

    Raises:
        ValueError: ``model`` has no such module (a method whose layers are its own, e.g. ``lowrank``).
    """
    from timm.layers import Mlp
    from timm.models.swin_transformer_v2 import WindowAttention
    from timm.models.vision_transformer import Attention

    units = [m for m in model.modules() if isinstance(m, (Attention, Mlp, WindowAttention))]
    if not units:
        raise ValueError(
            f"train.activation_checkpointing: {type(model).__name__} has no timm Attention or Mlp module to "
            "recompute; set it to false for this method"
        )
    for m in units:  # bound to the module itself, so a deep copy recomputes its own forward
        m.forward = types.MethodType(_checkpointed_forward, m)
    return len(units)


class StepClock:
    """Host-side timing of a training loop: waits for batches and intervals between completed steps.

    ``batches`` wraps the epoch's iterator and adds the time each ``next`` blocks; ``done`` marks a step as finished
    (the engines call it when the step's loss has been read back, which on a GPU is one step behind, so an interval
    is a step of the device). Medians skip each epoch's first interval (compilation, warm-up).
    """

    def __init__(self):
        self.wait_s, self.steps, self.intervals = 0.0, 0, []
        self._last: float | None = None

    def batches(self, it: Iterable) -> Iterator:
        it = iter(it)
        self._last = None
        while True:
            tick = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - tick
            self.steps += 1
            yield batch

    def done(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.intervals.append(now - self._last)
        self._last = now

    def step_s(self) -> float | None:
        """Median seconds per step (warm-up excluded), or None before two steps were done."""
        steady = self.intervals[1:] or self.intervals
        return statistics.median(steady) if steady else None

    def metrics(self, train_s: float) -> dict[str, float]:
        """``perf/step_ms``, ``perf/data_wait_ms`` (per step) and ``perf/data_wait_frac`` (of the training time;
        near 1 = input-bound)."""
        out = {"perf/data_wait_ms": 1e3 * self.wait_s / max(1, self.steps),
               "perf/data_wait_frac": self.wait_s / max(train_s, 1e-9)}  # fmt: skip
        if (step := self.step_s()) is not None:
            out["perf/step_ms"] = 1e3 * step
        return out
