"""Frozen-prefix activation cache: what a frozen backbone computes before its first trainable layer, once per clip.

A parameter-efficient method trains a few parameters on top of a frozen backbone. Whatever the backbone computes
*before* its first trainable parameter is a fixed function of the clip, so with no augmentation it is the same in
every epoch and in every trial over the same backbone and data (a learning-rate or seed sweep). This module wraps
that frozen prefix so that it runs once per clip and is looked up afterwards:

- ``frozen`` with ``train_norms: false`` (the strict linear probe) is frozen all the way to the read-out: the whole
  method's output is cached and only the task's head trains; the encoder never runs again after the first pass.
- LAVISH, AVISH and the other adapters on the frozen shared ViT (and ``frozen`` with its default trainable
  LayerNorms) train something in block 0, so only the tokeniser's output (``method.tokens``) is cacheable: the
  saving is the patch embedding, a few per cent of the step (bench/frozen_cache.py prints both ratios).

Which part is cached: the whole method when none of its parameters is trainable, else the submodule named by the
method's opt-in class attribute ``frozen_prefix`` (e.g. ``frozen_prefix = "tokens"``), when it is frozen. The
part's ``forward`` must take the batch dict as its first argument (its ``id`` and ``*_present`` keys name the
entries). Nothing is cached (:func:`attach` returns None and says why) when the part is not deterministic in
training mode (dropout, stochastic depth, batch norm), or the run augments its inputs (``train.mixup_alpha``).

Entries are keyed by clip ``id`` and which modalities are present (masked evaluation passes differ); a cache as a
whole is keyed by :func:`cache_key`, a hash of the part's weights and buffers, its class and the method's and
backbone's configs, the dataset's fingerprint and input shapes, so that it can be saved (safetensors) and reused
by later trials of a sweep.

Integration, one call after the model is built and its cost counted (``harness/run/trial.py``'s ``run_trial``)::

    cache = frozen_cache.attach(method, spec, data)   # None when nothing is cacheable; prints why not

The engine needs no change: the wrapped part answers from the cache inside ``method(batch)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

PRESENT_KEYS = ("audio_present", "video_present")


def cacheable_part(method: nn.Module) -> tuple[str, nn.Module] | tuple[None, str]:
    """``(name, module)`` of the frozen prefix to cache, or ``(None, reason)``.

    The whole method ("") when nothing in it trains; else the opt-in ``method.frozen_prefix`` submodule.
    """
    if not any(p.requires_grad for p in method.parameters()):
        name, part = "", method
    else:
        name = method.frozen_prefix
        if not name:
            return None, f"{type(method).__name__} trains parameters and declares no frozen_prefix"
        part = method.get_submodule(name)
        trainable = [n for n, p in part.named_parameters() if p.requires_grad]
        if trainable:
            return None, f"frozen_prefix {name!r} has trainable parameters ({', '.join(trainable[:3])})"
    for sub_name, sub in part.named_modules():
        stochastic = (
            (isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0)
            or (getattr(sub, "drop_prob", 0.0) or 0.0) > 0
            or isinstance(sub, nn.modules.batchnorm._BatchNorm)
        )
        if stochastic:
            return None, f"{name or 'the method'}.{sub_name} ({type(sub).__name__}) differs between passes in training"
    return name, part


def cache_key(part: nn.Module, spec, data) -> str:
    """Hash of what the cached activations depend on: the part's weights and buffers, configs, data and shapes."""
    h = hashlib.sha256()
    meta = {
        "class": f"{type(part).__module__}.{type(part).__qualname__}",
        "method": spec.method.model_dump(mode="json"),
        "backbone": spec.backbone.model_dump(mode="json"),
        "dataset": spec.dataset.params.model_dump(mode="json"),
        "fingerprint": data.fingerprint,
        "input": repr(data.spec),
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in [*part.state_dict(keep_vars=False).items()]:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ActivationCache:
    """Per-clip outputs of a frozen part, looked up by clip id and presence flags.

    Args:
        part: the frozen module whose ``forward(batch, ...)`` is replaced by :meth:`forward`.
        key: :func:`cache_key` of the part (names the file on disk).
        directory: where :meth:`save` writes and where an earlier trial's file is loaded from; None = memory only.
    """

    def __init__(self, part: nn.Module, key: str, directory: Path | None = None):
        self.part, self.key, self.directory = part, key, directory
        self.compute = part.forward  # the bound original forward
        self.entries: dict[str, list[Tensor]] = {}  # clip key -> flat leaves of its output, batch dim removed
        self.spec: pytree.TreeSpec | None = None
        self.hits = self.misses = 0
        self.loaded = self.load()

    @staticmethod
    def clip_keys(batch: dict) -> list[str]:
        """``"<id>|<audio present><video present>"`` per clip (a missing ``*_present`` key means present)."""
        flags = [batch.get(k) for k in PRESENT_KEYS]
        flags = [torch.ones(len(batch["id"]), dtype=torch.bool) if f is None else f.cpu() for f in flags]
        return [f"{i}|{int(a)}{int(v)}" for i, a, v in zip(batch["id"], *flags)]

    def forward(self, batch: dict, *args, **kwargs):
        """The part's output for ``batch``: from the cache when every clip is in it, else computed and stored."""
        keys = self.clip_keys(batch)
        if self.spec is not None and all(k in self.entries for k in keys):
            self.hits += len(keys)
            device = next(iter(batch[k] for k in ("video", "audio") if k in batch)).device
            leaves = [torch.stack(col).to(device) for col in zip(*(self.entries[k] for k in keys))]
            return pytree.tree_unflatten(leaves, self.spec)
        self.misses += len(keys)
        with torch.no_grad():
            out = self.compute(batch, *args, **kwargs)
        leaves, self.spec = pytree.tree_flatten(out)
        for i, k in enumerate(keys):
            self.entries[k] = [leaf[i].detach().to("cpu", copy=True) for leaf in leaves]  # own copy, off the GPU
        return out

    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.key[:32]}.safetensors"

    def save(self) -> Path | None:
        """Write every entry to ``directory`` (safetensors; the tree spec as JSON metadata); None = memory only."""
        from harness.data.storage import save_atomic

        path = self.path()
        if path is None or self.spec is None or not self.entries:
            return None
        tensors = {f"{k}#{j}": t.contiguous() for k, leaves in self.entries.items() for j, t in enumerate(leaves)}
        # Atomic, per-process temporary: concurrent trials never read half a file nor write into each other's.
        return save_atomic(tensors, path, metadata={"treespec": pytree.treespec_dumps(self.spec), "key": self.key})

    def load(self) -> bool:
        """Read an earlier trial's entries when a file of this key exists."""
        from safetensors import safe_open

        path = self.path()
        if path is None or not path.is_file():
            return False
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if meta.get("key") != self.key:
                return False
            self.spec = pytree.treespec_loads(meta["treespec"])
            grouped: dict[str, dict[int, Tensor]] = {}
            for name in f.keys():
                k, j = name.rsplit("#", 1)
                grouped.setdefault(k, {})[int(j)] = f.get_tensor(name)
        self.entries = {k: [d[j] for j in sorted(d)] for k, d in grouped.items()}
        return True


def attach(
    method: nn.Module, spec, data, directory: Path | None = None, verbose: bool = True
) -> ActivationCache | None:
    """Replace the frozen prefix's ``forward`` of ``method`` by a cached one; None (and why) when not possible.

    Args:
        method: the built method (its trainable flags final).
        spec: the run (``train.mixup_alpha`` is checked; configs go into the key).
        data: the dataset (its ``fingerprint`` and ``spec`` go into the key).
        directory: where caches persist across trials (e.g. ``<cache_dir>/activations``); None = this trial only.
    """
    if spec.train.mixup_alpha > 0:
        reason = f"train.mixup_alpha={spec.train.mixup_alpha} augments the inputs"
    else:
        name, part = cacheable_part(method)
        if name is not None:
            cache = ActivationCache(part, cache_key(part, spec, data), directory)
            part.forward = cache.forward  # instance attribute: nn.Module.__call__ now answers from the cache
            if verbose:
                state = f"{len(cache.entries)} entries loaded" if cache.loaded else "empty"
                print(f"frozen cache: {f'method.{name}' if name else 'the whole method'} ({state})")
            return cache
        reason = part
    if verbose:
        print(f"frozen cache: off ({reason})")
    return None


def detach_cache(cache: ActivationCache) -> None:
    """Give the part back its own ``forward``."""
    cache.part.__dict__.pop("forward", None)
