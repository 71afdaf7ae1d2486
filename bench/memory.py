"""Memory of a training step: a frozen-backbone method against full fine-tuning of the same backbone, on CPU.

Each pair is one model built once per side: as the method freezes it, and with ``requires_grad_(True)`` on every
parameter (full fine-tuning of the same ViT). The step is the torch engine's (its ``optimizer``: AdamW over the
trainable parameters; forward, backward, grad clipping, ``opt.step``), at batch 32 on the D 192 size of step.py.

Peak: tracemalloc does not see torch's allocations and the CPU profiler's memory events are not reliable here, so
a ``TorchDispatchMode`` follows every tensor storage the step creates (views and in-place results share one) and
sums the live ones after each op; peak = parameters and inputs + the highest live sum during the first step (the
optimizer state is allocated there). Beside it, an account of what a step keeps: gradients and optimizer state
after the step, and the activations autograd saves for backward (``saved_tensors_hooks``, parameters excluded).
It also checks what the frozen side promises: every frozen parameter has ``.grad`` None after the step and no
optimizer state.

``perf/peak_mem_mb`` of a trial is different: the process's high-water resident set size (``ru_maxrss``) on CPU
(the allocator's peak on CUDA), so it includes Python, torch and the dataset, and in one process running several
trials it never goes down (a sweep runs each trial in its own worker, where it is per trial).

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness.config import RunSpec
from harness.models.complexity import example_batch
from harness.registry import ENGINES, METHODS, TASKS
from harness.run.profile import load_profile, preset_path

SMALL = ["backbone.patch_size=16", "input.image_size=64", "backbone.embed_dim=192", "backbone.num_heads=3"]
PAIRS = {"lavish": {"name": "lavish"}, "frozen probe": {"name": "frozen", "train_norms": False}}


class LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by the storages created inside the mode (each storage counted once)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.live:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.now += st.nbytes()
        self.peak = max(self.peak, self.now)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        return out


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def step_memory(method_cfg: dict, full: bool, batch_size: int) -> dict[str, float]:
    """Bytes of one training step (MiB): peak, and parameters, gradients, optimizer state, saved activations."""
    spec = load_profile(preset_path("mbt_tiny"), ["method=" + json.dumps(method_cfg), *SMALL])
    torch.manual_seed(0)
    method = METHODS.get(spec.method.name).build(spec.method, spec.backbone, spec.input)
    task = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, method.embed_dim)
    model = nn.ModuleDict({"method": method, "task": task})
    if full:
        model.requires_grad_(True)
    run = RunSpec.from_dict({"name": "bench", "dataset": {"name": "synthetic"}, "method": {"name": "vanilla"}})
    opt = ENGINES.get("torch")(run).optimizer(model)  # the engine's AdamW over the trainable parameters
    params = [p for p in model.parameters() if p.requires_grad]
    batch = example_batch(spec.input, batch_size)
    batch["video"], batch["audio"] = torch.randn_like(batch["video"]), torch.randn_like(batch["audio"])
    batch["label"] = torch.randint(0, spec.input.num_classes, (batch_size,))
    param_ptrs = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage()._cdata not in param_ptrs:
            saved.append(t)
        return t

    base = nbytes(list(model.parameters()) + [v for v in batch.values() if torch.is_tensor(v)])
    with LiveBytes() as live:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = task.loss(method(batch), batch)
        activations = nbytes(saved)
        saved.clear()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        del loss
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    with_grad = [n for n, p in frozen if p.grad is not None]
    with_state = [n for n, p in frozen if p in opt.state]
    if with_grad or with_state:
        raise SystemExit(f"{method_cfg['name']}: frozen weights kept gradients {with_grad[:3]} or optimizer state "
                         f"{with_state[:3]} after a step")  # fmt: skip
    mib = 2**20
    return {
        "peak": (base + live.peak) / mib,
        "params": nbytes(model.parameters()) / mib,
        "trainable": sum(p.numel() for p in params),
        "frozen": sum(p.numel() for _, p in frozen),
        "grads": nbytes([p.grad for p in params if p.grad is not None]) / mib,
        "state": nbytes([v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]) / mib,
        "activations": activations / mib,
    }


def main() -> None:
    for case, cfg in PAIRS.items():
        sides = {
            "frozen": step_memory(cfg, full=False, batch_size=32),
            "full": step_memory(cfg, full=True, batch_size=32),
        }
        for side, m in sides.items():
            print(f"  {case:12s} {side:6s}: peak {m['peak']:7.1f} MiB = params {m['params']:.1f} + inputs + step; "
                  f"grads {m['grads']:.1f}, AdamW state {m['state']:.1f}, saved activations {m['activations']:.1f} "
                  f"MiB; {m['trainable']:,} trainable / {m['frozen']:,} frozen parameters")  # fmt: skip
        ratio = sides["frozen"]["peak"] / sides["full"]["peak"]
        name = case.replace(" ", "_")
        print(f"memory_frozen_vs_full[{name}]: {ratio:.2f}x peak of a step (target < 1; frozen weights: no grad, "
              "no optimizer state: checked)")  # fmt: skip


if __name__ == "__main__":
    main()
