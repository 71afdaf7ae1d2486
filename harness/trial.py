"""One trial: build the dataset, method and task from a resolved spec, count their cost, train, evaluate.

``run_trial`` is the single code path: ``harness run`` calls it directly, each Ray Tune trial of a sweep calls it
in a worker process, and the tests call it too. Where the figures go is the reporter's business.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Protocol

import torch

from harness.config import ConfigError, RunSpec
from harness.data.base import harness_cache
from harness.registry import ENGINES, FORMATS, METHODS, TASKS


class Reporter(Protocol):
    """Where a trial sends what it measures."""

    def start(self, info: dict) -> None:
        """Once, before training: ``{"tags": {...}, "metrics": {"model/params_total": ..., ...}}``."""

    def report(self, metrics: dict[str, float], step: int) -> None:
        """Each epoch's figures, then the final ones (``test/*``, ``perf/*``) at step ``train.epochs``.

        A reporter that also keeps checkpoints has ``restore()`` and takes ``report(metrics, step, state)``
        (``harness.engines.torch_engine.Checkpoints``): ``run_trial`` then hands it to the engine as such.
        """


class PrintReporter:
    """Prints one line per epoch; the default of ``run_trial`` and what tests use."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def start(self, info: dict) -> None:
        m = info["metrics"]
        print(
            f"model: {m['model/params_total'] / 1e6:.3f}M params ({m['model/params_trainable'] / 1e6:.3f}M trainable),"
            f" {m['model/gflops']:.4f} GFLOPs/clip",
            file=self.stream,
        )

    def report(self, metrics: dict[str, float], step: int) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" in k)
        print(f"[{step}] {shown}", file=self.stream, flush=True)


def cache_dir(spec: RunSpec) -> Path:
    """Where generated and prepared data is cached: ``cache_dir``, ``$HARNESS_CACHE`` or ~/.cache/fusion-harness."""
    return Path(spec.cache_dir) if spec.cache_dir else harness_cache()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels where it has them."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_dataset(spec: RunSpec):
    """The dataset object of ``spec`` (its format's loader class), generating or loading the cache."""
    return FORMATS.get(spec.dataset.format)(spec.dataset.params, cache_dir(spec))


def build_model(spec: RunSpec, input_spec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The method and the task (which owns the shared head), freshly initialised from ``spec.seed``."""
    torch.manual_seed(spec.seed)
    method = METHODS.get(spec.method.name)(spec.method, spec.backbone, input_spec)
    if spec.backbone.checkpoint is not None:  # after init, before the cost is counted (harness/weights.py)
        from harness.weights import read_checkpoint

        loaded = method.load_backbone(read_checkpoint(spec.backbone.checkpoint))
        print(loaded.summary(f"backbone.checkpoint {spec.backbone.checkpoint}"), file=sys.stderr)
    if spec.backbone.pretrained != "none":  # the cached synthetic-pretrained frozen backbone (harness/pretrain.py)
        from harness.pretrain import apply_pretrained

        method.pretrained_key = apply_pretrained(method, spec, cache_dir(spec))
    task = TASKS.get(spec.task_name)(spec.task, input_spec.num_classes, method.embed_dim)
    return method, task


def model_cost(method: torch.nn.Module, task: torch.nn.Module, input_spec) -> dict[str, float]:
    """``model/*`` metrics: params (total, trainable) of method + head, forward FLOPs and MACs of one clip."""
    from harness.complexity import count_params, forward_flops

    total, trainable = count_params(torch.nn.ModuleDict({"method": method, "task": task}))
    flops = forward_flops(method, task, input_spec)
    return {
        "model/params_total": float(total),
        "model/params_trainable": float(trainable),
        "model/gflops": flops["gflops"],
        "model/gmacs": flops["gmacs"],
    }


def run_tags(device: torch.device) -> dict[str, str]:
    """Tags a trial adds about where it ran: device and torch version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"harness.device": name, "harness.torch_version": torch.__version__}


def run_trial(spec: RunSpec, reporter: Reporter | None = None) -> dict[str, float]:
    """Train and evaluate one configuration; returns the final metrics.

    Args:
        spec: the resolved run (``harness.config.load_config`` or ``RunSpec.from_dict``).
        reporter: receives the cost once and every epoch's metrics; default prints them.
    """
    reporter = reporter or PrintReporter()
    engine = ENGINES.get(spec.engine.name)(spec)
    if getattr(engine, "distributed", False):  # its workers build the trial themselves (deepspeed)
        return engine.launch(reporter)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    seed_everything(spec.seed)
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    tags = {**run_tags(engine.device), "harness.dataset_fingerprint": getattr(data, "fingerprint", "")}
    if hasattr(data, "manifest"):  # prepared real data: on which subset (manifest hash), decoded by what
        tags.update({"harness.manifest_hash": data.manifest["hash"], "harness.decoder": data.decoder})
    if getattr(method, "pretrained_key", None):  # backbone.pretrained: the cached weights' key (harness/pretrain.py)
        tags["harness.backbone_pretrained"] = method.pretrained_key
    reporter.start({"tags": tags, "metrics": model_cost(method, task, data.spec)})
    cache = None
    if spec.train.frozen_cache:  # the frozen prefix's activations, once per clip (harness/frozen_cache.py)
        from harness.frozen_cache import attach

        cache = attach(method, spec, data, cache_dir(spec) / "activations")
    final = engine.fit(method, task, data, reporter.report, reporter if hasattr(reporter, "restore") else None)
    if cache is not None:
        cache.save()  # later trials over the same frozen part and data start from it
        print(f"frozen cache: {cache.hits} hits, {cache.misses} misses", file=sys.stderr)
    return final


def checkpoint_dir(spec: RunSpec) -> Path:
    """Where ``harness run`` keeps the checkpoint of ``spec``: ``.harness/checkpoints/<name>-<config digest>``."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path.cwd() / ".harness" / "checkpoints" / f"{spec.name}-{digest}"


class LocalCheckpoints:
    """A reporter that keeps the trial's latest checkpoint in a local folder, then passes each report on.

    ``DIR/state.pt`` (``torch.save``; read back with ``weights_only=True``) is replaced atomically after every epoch
    and holds ``extra`` too (``harness run``: the MLflow run id, so that ``--resume`` continues the same run).

    Args:
        reporter: where the figures go (an ``MlflowReporter``).
        folder: the checkpoint folder (:func:`checkpoint_dir`).
        extra: values stored in every checkpoint.
        resume: restore from ``folder``; otherwise the trial starts afresh (and overwrites what is there).
    """

    def __init__(self, reporter: Reporter, folder: Path, extra: dict | None = None, resume: bool = False):
        self.reporter, self.folder, self.extra, self.resume = reporter, Path(folder), extra or {}, resume

    @staticmethod
    def read(folder: Path) -> dict | None:
        """The checkpoint in ``folder``, or None when there is none."""
        path = Path(folder) / "state.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def start(self, info: dict) -> None:
        self.reporter.start(info)

    def restore(self) -> dict | None:
        return self.read(self.folder) if self.resume else None

    def report(self, metrics: dict[str, float], step: int, state: dict | None = None) -> None:
        if state is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "state.pt.tmp"
            torch.save({**state, **self.extra}, tmp)
            os.replace(tmp, self.folder / "state.pt")  # a crash mid-write leaves the previous checkpoint intact
        self.reporter.report(metrics, step)


def cli_run(path: str, overrides: list[str], tracking_uri: str | None, resume: bool = False) -> int:
    """``harness run FILE``: one trial without Ray, logged to MLflow as a run of its own.

    Checkpoints each epoch to :func:`checkpoint_dir`; with ``resume``, continues the interrupted run of the same
    file and overrides from its last checkpoint, in the same MLflow run.
    """
    from harness.config import load_config
    from harness.tracking import MlflowReporter

    spec = load_config(path, overrides)
    if not isinstance(spec, RunSpec):
        raise ConfigError([("search", f"{path} is a sweep; run it with `harness sweep {path}`")])
    folder, run_id = checkpoint_dir(spec), None
    if resume:
        state = LocalCheckpoints.read(folder)
        if state is None or "mlflow_run_id" not in state:
            where = f"no checkpoint of this run in {folder} (same file, same --set, same working directory)"
            raise ConfigError([("--resume", f"{where}; run it without --resume")])
        run_id = state["mlflow_run_id"]
        print(f"resuming MLflow run {run_id} after epoch {state['epoch']} from {folder}", flush=True)
    with MlflowReporter.open(spec, tracking_uri, run_id=run_id) as mlflow_reporter:
        reporter = LocalCheckpoints(mlflow_reporter, folder, {"mlflow_run_id": mlflow_reporter.run_id}, resume)
        final = run_trial(spec, reporter)
    print(" ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("test/")))
    r = mlflow_reporter
    print(f"logged to MLflow run {r.run_id} in experiment '{r.experiment}' at {r.uri}; checkpoint in {folder}")
    return 0
