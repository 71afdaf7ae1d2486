"""Transfer from an earlier harness run: its trained method as the backbone of a new run, fine-tuned or frozen.

``backbone.checkpoint`` names the earlier run's training checkpoint: ``mlflow:RUN_ID`` (the run's
``harness.checkpoint`` tag: ``harness run``'s checkpoint folder, a sweep trial's last Tune checkpoint),
``mlflow:EXPERIMENT?KEY=VALUE`` (the matching run of a pretraining sweep, :func:`resolve`), the folder, or its
``state.pt``. A trial reads the MLflow store for this (only reads: the sweep driver stays the only writer), so on
a cluster whose workers cannot reach the store, give paths instead. The checkpoint's ``method.*`` weights (its
``model`` entry, read with ``weights_only=True``) load by name into the new run's method, which must be the same
architecture; its task's weights (``task.*``: the av_pretrain heads, a classifier) are left behind, and the new
task starts fresh. Any other file is an image-ViT checkpoint for the method's own ``load_backbone``
(``harness/models/weights.py``).

``backbone.transfer: linear`` is linear evaluation: the method is frozen (no gradients) and always runs in eval mode
(BatchNorm statistics and dropout as loaded), so only the task's head trains. The run's tags name the source:
``harness.pretrained_from`` (the MLflow run id, or the checkpoint path), ``harness.pretrained_checkpoint`` and
``harness.transfer``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from harness.api import CheckpointError
from harness.config import RunSpec

MLFLOW = "mlflow:"
CHECKPOINT_TAG = "harness.checkpoint"  # as harness/run/evaluate.py: where a run's training checkpoint is


def resolve(ref: str, uri: str | None = None, spec: RunSpec | None = None) -> tuple[Path, str | None]:
    """``backbone.checkpoint`` -> (the file to read, the MLflow run id it came from or None).

    ``mlflow:EXPERIMENT?KEY=VALUE&...`` (a two-stage sweep's transfer trials) is the latest FINISHED run of that
    experiment with a checkpoint whose params have those values and ``spec``'s own ``seed``, ``method.*`` and
    ``backbone.*`` (but ``backbone.checkpoint`` / ``transfer``): the pretraining run of this architecture and seed.

    Raises:
        CheckpointError: an unknown run, no matching run, or a run without a checkpoint tag.
    """
    if not ref.startswith(MLFLOW):
        path = Path(ref)
        return (path / "state.pt" if path.is_dir() else path), None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.tracking import tracking_uri

    run_id = ref[len(MLFLOW) :]
    store = tracking_uri(uri)
    client = MlflowClient(store)
    try:
        run = find_run(client, run_id, spec) if "?" in run_id else client.get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(f"backbone.checkpoint: {ref!r}: no run {run_id!r} in {store}") from e
    run_id = run.info.run_id
    where = run.data.tags.get(CHECKPOINT_TAG)
    if where is None:
        raise CheckpointError(f"backbone.checkpoint: run {run_id} has no {CHECKPOINT_TAG} tag (a deepspeed trial, or "
                              "a run logged before checkpoints were tagged): give its checkpoint folder")  # fmt: skip
    path = Path(where)
    return (path / "state.pt" if path.is_dir() else path), run_id


def find_run(client, query: str, spec: RunSpec | None):
    """The run of ``EXPERIMENT?KEY=VALUE&...`` (:func:`resolve`)."""
    from harness.tracking import run_params

    experiment, _, pairs = query.partition("?")
    wanted = dict(p.split("=", 1) for p in pairs.split("&") if p)
    if spec is not None:
        own = run_params(spec.to_dict())
        skip = ("backbone.checkpoint", "backbone.transfer", "method.name")
        wanted = {**{k: v for k, v in own.items() if k.startswith(("method.", "backbone.")) and k not in skip},
                  "seed": own["seed"], "method.name": own["method.name"], **wanted}  # fmt: skip
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CheckpointError(f"backbone.checkpoint: mlflow:{query}: no experiment {experiment!r}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    for run in runs:
        if CHECKPOINT_TAG in run.data.tags and all(run.data.params.get(k) == v for k, v in wanted.items()):
            return run
    shown = ", ".join(f"{k}={v}" for k, v in sorted(wanted.items()) if k in pairs or k in ("seed", "method.name"))
    raise CheckpointError(f"backbone.checkpoint: mlflow:{query}: no finished run with a checkpoint in experiment "
                          f"{experiment!r} has {shown} and this run's method and backbone")  # fmt: skip


def is_run_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a harness run's model (``method.*`` and ``task.*`` keys), not an image ViT's."""
    return bool(state) and all(k.startswith(("method.", "task.")) for k in state)


def load_method_state(method: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy a run's ``method.*`` weights into ``method``; returns how many tensors were loaded.

    Raises:
        CheckpointError: a key missing on either side or a shape that differs (the architectures differ).
    """
    theirs = {k.removeprefix("method."): v for k, v in state.items() if k.startswith("method.")}
    ours = method.state_dict()
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:

        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "") if names else "none"

        raise CheckpointError(
            f"backbone.checkpoint {source}: not the same method architecture as this run's (missing: {few(missing)}; "
            f"unexpected: {few(unexpected)}; other shapes: {few(sorted(shapes))}); use the pretraining run's method "
            "and backbone sections"
        )
    method.load_state_dict(theirs, strict=True)
    return len(theirs)


def load_backbone(method: nn.Module, spec: RunSpec) -> None:
    """``backbone.checkpoint`` into ``method``: a run's method weights by name, else the method's ``load_backbone``."""
    from harness.models.weights import read_checkpoint

    ref = spec.backbone.checkpoint
    path, _ = resolve(ref, spec.tracking.uri, spec)
    state = read_checkpoint(path)
    if is_run_state(state):
        n = load_method_state(method, state, ref)
        print(f"backbone.checkpoint {ref}: loaded {n} method tensors from {path}", file=sys.stderr)
    else:
        print(method.load_backbone(state).summary(f"backbone.checkpoint {ref}"), file=sys.stderr)


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.eval()  # the engines call train() every epoch; a frozen backbone must not update its BN statistics


def freeze(method: nn.Module) -> None:
    """Linear evaluation: no gradient reaches ``method``, and it runs in eval mode whatever the engine sets."""
    method.requires_grad_(False)
    method.register_forward_pre_hook(_stay_in_eval)


def transfer_tags(spec: RunSpec) -> dict[str, str]:
    """The tags that name where a transferred run started from (empty without ``backbone.checkpoint``)."""
    if spec.backbone.checkpoint is None:
        return {}
    path, run_id = resolve(spec.backbone.checkpoint, spec.tracking.uri, spec)
    source = run_id or str(path.resolve())
    return {"harness.pretrained_from": source, "harness.pretrained_checkpoint": str(path.resolve()),
            "harness.transfer": spec.backbone.transfer}  # fmt: skip
