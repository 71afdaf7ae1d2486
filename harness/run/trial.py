"""One trial: build the dataset, method and task from a resolved spec, count their cost, train, evaluate.

``run_trial`` is the single code path: ``harness run`` calls it directly (``harness.run.local``), each Ray Tune
trial of a sweep calls it in a worker process (``harness.sweep.trainable``), and the tests call it too. Where the
figures go is the reporter's business (``harness.api.Reporter``).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from harness.api import Checkpoints, Reporter, TrainHook
from harness.config import RunSpec
from harness.data.storage import harness_cache
from harness.registry import ENGINES, FORMATS, METHODS, TASKS, resolve_target
from harness.run.reporting import LocalCheckpoints, PrintReporter

HOOKS_ENV = "HARNESS_HOOKS"  # comma-separated ``module:attr`` factories of harness.api.TrainHook


def cache_dir(spec: RunSpec) -> Path:
    """Where generated and prepared data is cached: ``cache_dir``, ``$HARNESS_CACHE`` or ~/.cache/fusion-harness."""
    return Path(spec.cache_dir) if spec.cache_dir else harness_cache()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels where torch has them, for one trial; the process's setting is restored after it
    (a sweep worker runs one trial after another)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def build_dataset(spec: RunSpec):
    """The dataset object of ``spec`` (its format's loader class), generating or loading the cache."""
    return FORMATS.get(spec.dataset.format)(spec.dataset.params, cache_dir(spec))


def build_model(spec: RunSpec, input_spec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The method and the task (which owns the shared head), freshly initialised from ``spec.seed``.

    A task that scores per segment (``spec.task.method_segments()`` = S) gets a method built on one segment's shapes
    and run on each of a clip's S segments (``harness.api.segments``).
    """
    from harness.api import score_per_segment, segment_spec

    torch.manual_seed(spec.seed)
    segments = spec.task.method_segments()
    shapes = segment_spec(input_spec, segments) if segments else input_spec
    method = METHODS.get(spec.method.name).build(spec.method, spec.backbone, shapes)
    if spec.backbone.checkpoint is not None:  # after init, before the cost is counted (harness/run/transfer.py)
        from harness.run.transfer import load_backbone

        load_backbone(method, spec)
    if spec.backbone.pretrained != "none":  # the cached synthetic-pretrained frozen backbone (harness/run/pretrain.py)
        from harness.run.pretrain import apply_pretrained

        apply_pretrained(method, spec, cache_dir(spec))
    if spec.backbone.transfer == "linear":  # linear evaluation: only the task's head trains
        from harness.run.transfer import freeze

        freeze(method)
    if segments:
        score_per_segment(method, segments)
    task = TASKS.get(spec.task_name)(spec.task, input_spec.num_classes, method.embed_dim)
    task.bind(method)  # a head over the method's tokens (segmentation) is built on its token layout
    task.loss_reduction = spec.train.loss_reduction  # over a clip's per-class loss terms (Task.reduce_classes)
    return method, task


def model_cost(method: torch.nn.Module, task: torch.nn.Module, input_spec, batch_size: int = 1) -> dict[str, float]:
    """``model/*`` metrics: params (total, trainable) of method + head, forward FLOPs and MACs of one clip, and the
    FLOPs per clip of a training step (forward + backward at ``batch_size`` clips: what ``perf/mfu`` counts).

    Counted on a meta-device copy (``harness.models.complexity.meta_copy``): shapes only, no forward on real tensors.
    """
    from harness.models.complexity import count_params, forward_flops, meta_copies, train_flops

    total, trainable = count_params(torch.nn.ModuleDict({"method": method, "task": task}))
    flops = forward_flops(*meta_copies(method, task), input_spec)
    return {
        "model/params_total": float(total),
        "model/params_trainable": float(trainable),
        "model/gflops": flops["gflops"],
        "model/gmacs": flops["gmacs"],
        "model/train_gflops": train_flops(method, task, input_spec, batch_size)["gflops"],
    }


def run_tags(spec: RunSpec, device: torch.device, data, task: torch.nn.Module) -> dict[str, str]:
    """Tags a trial adds: where it ran and at which precision, with which package versions (those of the trial's own
    process: a sweep's workers may differ from its driver), on which data (fingerprint; a prepared set's manifest hash
    and decoder), which pretrained backbone, and the task's primary metric (what reports sort by)."""
    from harness.run.pretrain import pretrained_key
    from harness.tracking import package_versions

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    from harness.run.perf import resolve_precision

    tags = {"harness.device": name, "harness.torch_version": torch.__version__, **package_versions(),
            **data.provenance(), "harness.primary_metric": f"test/{task.primary_metric}",
            "harness.precision": resolve_precision(spec.train.precision, device)}  # fmt: skip
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPU(s) a sweep's trial was given (harness/sweep/driver.py)
        tags["harness.cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    tags["harness.split_counts"] = " ".join(f"{k}={len(v)}" for k, v in data.splits.items())  # mlflow.log_input's
    if (key := pretrained_key(spec)) is not None:  # backbone.pretrained: the cached weights' key
        tags["harness.backbone_pretrained"] = key
    from harness.run.transfer import transfer_tags

    tags.update(transfer_tags(spec))  # backbone.checkpoint: the run it started from
    if spec.backbone.transfer != "finetune":
        tags["harness.transfer"] = spec.backbone.transfer
    return tags


def env_hooks(spec: RunSpec) -> list[TrainHook]:
    """The hooks that ``$HARNESS_HOOKS`` names (``module:attr`` factories called with ``spec``; None = no hook)."""
    names = [n.strip() for n in os.environ.get(HOOKS_ENV, "").split(",") if n.strip()]
    return [hook for n in names if (hook := resolve_target(n)(spec)) is not None]


def run_trial(spec: RunSpec, reporter: Reporter | None = None, hooks: Sequence[TrainHook] = ()) -> dict[str, float]:
    """Train and evaluate one configuration; returns the final metrics.

    Args:
        spec: the resolved run (``harness.config.load_config`` or ``RunSpec.from_dict``).
        reporter: receives the cost once and every epoch's metrics (default: printed); one that is also a
            ``harness.api.Checkpoints`` keeps the training state and resumes from it.
        hooks: called inside the training loop, besides those of ``$HARNESS_HOOKS``.
    """
    reporter = reporter or PrintReporter()
    engine = ENGINES.get(spec.engine.name).build(spec)
    if engine.distributed:  # its workers build the trial themselves (deepspeed)
        return engine.launch(reporter)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    with deterministic():
        seed_everything(spec.seed)
        data = build_dataset(spec)
        method, task = build_model(spec, data.spec)
        cost = model_cost(method, task, data.spec, batch_size=spec.train.batch_size // spec.train.grad_accum)
        engine.train_gflops = cost["model/train_gflops"]  # perf/mfu (harness/run/perf.py)
        reporter.start({"tags": run_tags(spec, engine.device, data, task), "metrics": cost})
        cache = None
        if spec.train.frozen_cache:  # the frozen prefix's activations, once per clip (harness/run/frozen_cache.py)
            from harness.run.frozen_cache import attach

            cache = attach(method, spec, data, cache_dir(spec) / "activations")
        checkpoints = reporter if isinstance(reporter, Checkpoints) else None
        try:
            final = engine.fit(method, task, data, reporter.report, checkpoints, [*hooks, *env_hooks(spec)])
        finally:
            if isinstance(reporter, LocalCheckpoints):
                reporter.wait()  # a checkpoint still being written is on disk when the trial ends, even by an error
        if cache is not None:
            cache.save()  # later trials over the same frozen part and data start from it
            print(f"frozen cache: {cache.hits} hits, {cache.misses} misses", file=sys.stderr)
    return final
