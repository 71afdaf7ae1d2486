"""Model cost: parameter counts and FLOPs/MACs of one forward pass (and of a training step), by ``FlopCounterMode``.

Counted on the meta device (:func:`meta_copy`): shapes only, no arithmetic, no memory, the same counts as a forward
on real tensors (``tests/models/test_complexity.py``), in about a second at ViT-B where a CPU forward takes tens.

FLOPs are 2 x multiply-accumulates (``model/gflops`` = 2 x ``model/gmacs``), counted for matmuls, convolutions and
attention; element-wise ops, norms and softmax are not counted (the convention of fvcore and the papers' tables).

torch's flop table has formulas for the CUDA fused attention kernels only. On CPU, ``F.scaled_dot_product_attention``
(masked or not) dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``, which the table lacks, so attention
would silently count as zero; this module registers the standard formula for it (and its backward and the
out-of-tree ``fused_attention_overrideable`` op) the first time it counts, so counts are the same on every device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from harness.api import InputSpec, tree_map

_aten = torch.ops.aten


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_sdpa_formulas() -> None:
    """Add the attention formulas torch's flop table lacks (idempotent); ``count_flops`` calls it."""
    forward = [
        _aten._scaled_dot_product_flash_attention_for_cpu,
        _aten._scaled_dot_product_fused_attention_overrideable,
    ]
    backward = [
        _aten._scaled_dot_product_flash_attention_for_cpu_backward,
        _aten._scaled_dot_product_fused_attention_overrideable_backward,
    ]
    # Registering twice raises, and a newer torch may ship these formulas itself.
    for ops, formula in ((forward, _sdpa_forward), (backward, _sdpa_backward)):
        missing = [op for op in ops if op not in flop_counter.flop_registry]
        if missing:
            register_flop_formula(missing)(formula)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; trainable = ``requires_grad``. Shared parameters count once."""
    params = list(model.parameters())  # deduplicated by nn.Module
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def count_flops(model_fn: Callable, *args, **kwargs) -> dict[str, float]:
    """FLOPs of one call ``model_fn(*args, **kwargs)``.

    Args:
        model_fn: a module or function; it runs as given (train/eval mode and grad mode are the caller's).

    Returns:
        ``{"gflops": ..., "gmacs": ...}`` with gflops = 2 x gmacs.
    """
    register_sdpa_formulas()
    with FlopCounterMode(display=False) as counter:
        model_fn(*args, **kwargs)
    flops = counter.get_total_flops()
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9}


def example_batch(spec: InputSpec, batch_size: int = 1, device: torch.device | str | None = None) -> dict:
    """A batch of zeros with the spec's shapes and both modalities present, made on ``device`` (e.g. meta); the
    present flags on the host, as the engines hand them over (``harness.api.modalities``)."""
    return {
        "video": torch.zeros(batch_size, spec.frames, 3, spec.image_size, spec.image_size, device=device),
        "audio": torch.zeros(batch_size, 1, spec.n_mels, spec.n_frames, device=device),
        "label": torch.zeros(batch_size, dtype=torch.long, device=device),
        "id": [f"example{i}" for i in range(batch_size)],
        "audio_present": torch.ones(batch_size, dtype=torch.bool),
        "video_present": torch.ones(batch_size, dtype=torch.bool),
    }


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are on the meta device (shape, dtype and
    ``requires_grad`` kept), made without copying a single value: what the FLOP counts run on."""
    memo: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def meta_copies(method: nn.Module, task: nn.Module) -> tuple[nn.Module, nn.Module]:
    """:func:`meta_copy` of a method and its task in one copy, so a task that keeps a reference to its method
    (``av_pretrain``, ``Task.bind``) holds the method's copy, not the original."""
    pair = meta_copy(nn.ModuleDict({"method": method, "task": task}))
    return pair["method"], pair["task"]


def forward_flops(method: nn.Module, head: nn.Module | None, spec: InputSpec) -> dict[str, float]:
    """FLOPs of one clip's forward pass (batch 1, both modalities present) in eval mode, without grad.

    Works on a model built on the meta device (``harness profile``) or copied there (:func:`meta_copy`): the counter
    reads shapes only. There SDPA decomposes into two ``bmm`` s, which count the same FLOPs as the fused kernels'
    formula.

    Args:
        method: a ``FusionMethod``.
        head: the task, scored with its ``logits(out)`` (or called on the embedding if it has none); None skips it.
        spec: input shapes.

    Returns:
        ``{"gflops": ..., "gmacs": ...}``; the modules' train/eval modes are restored afterwards.
    """
    modules = [m for m in (method, head) if m is not None]
    was_training = [m.training for m in modules]
    batch = example_batch(spec, device=next(method.parameters()).device)  # on the meta device: shapes only

    def run() -> None:
        out = method(batch)
        if head is not None:
            head.logits(out) if hasattr(head, "logits") else head(out["embedding"])

    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            return count_flops(run)
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


def train_flops(method: nn.Module, task: nn.Module, spec: InputSpec, batch_size: int = 1) -> dict[str, float]:
    """FLOPs per clip of one training step: forward, loss and backward, in train mode, at ``batch_size`` clips with
    both modalities present; run on a :func:`meta_copy` (no memory, no arithmetic; the modules are untouched).

    The backward counts what autograd computes: input gradients wherever a trainable parameter lies below, weight
    gradients of trainable parameters only, so a frozen-backbone method costs less than 3 forwards. On meta SDPA is
    its math decomposition, whose backward is 4 matmuls per attention: the model's FLOPs, as MFU counts them (a
    fused kernel also recomputes the scores: hardware FLOPs, not counted). The targets are
    soft (zeros shaped like the logits), which every task's loss takes; the loss itself has no matmul.

    Returns:
        ``{"gflops": ..., "gmacs": ...}`` per clip.
    """
    register_sdpa_formulas()
    method, task = meta_copies(method, task)
    method.train(), task.train()
    batch = example_batch(spec, batch_size, device="meta")
    with FlopCounterMode(display=False) as forward:
        out = method(batch)
    batch["label"] = tree_map(torch.zeros_like, task.logits(out, batch))  # its FLOPs left out: not counted twice
    with FlopCounterMode(display=False) as rest:
        loss = task.loss(out, batch)
        if loss.requires_grad:
            loss.backward()
    flops = (forward.get_total_flops() + rest.get_total_flops()) / batch_size
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9}
