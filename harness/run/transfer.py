"""Transfer from an earlier harness run: its trained method as the backbone of a new run, fine-tuned or frozen.

``backbone.checkpoint`` names the earlier run's training checkpoint: ``mlflow:RUN_ID`` (the run's
``harness.checkpoint`` tag: ``harness run``'s checkpoint folder, a sweep trial's last Tune checkpoint), the folder, or
its ``state.pt``. The checkpoint's ``method.*`` weights (its ``model`` entry, read with ``weights_only=True``) load by
name into the new run's method, which must be the same architecture; its task's weights (``task.*``: the av_pretrain
heads, a classifier) are left behind, and the new task starts fresh. Any other file is an image-ViT checkpoint for
the method's own ``load_backbone`` (``harness/models/weights.py``).

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


def resolve(ref: str, uri: str | None = None) -> tuple[Path, str | None]:
    """``backbone.checkpoint`` -> (the file to read, the MLflow run id it came from or None).

    Raises:
        CheckpointError: an unknown run, or a run without a checkpoint tag.
    """
    if not ref.startswith(MLFLOW):
        path = Path(ref)
        return (path / "state.pt" if path.is_dir() else path), None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.tracking import tracking_uri

    run_id = ref[len(MLFLOW) :]
    store = tracking_uri(uri)
    try:
        run = MlflowClient(store).get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(f"backbone.checkpoint: {ref!r}: no run {run_id!r} in {store}") from e
    where = run.data.tags.get(CHECKPOINT_TAG)
    if where is None:
        raise CheckpointError(f"backbone.checkpoint: run {run_id} has no {CHECKPOINT_TAG} tag (a deepspeed trial, or "
                              "a run logged before checkpoints were tagged): give its checkpoint folder")  # fmt: skip
    path = Path(where)
    return (path / "state.pt" if path.is_dir() else path), run_id


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
    path, _ = resolve(ref, spec.tracking.uri)
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
    path, run_id = resolve(spec.backbone.checkpoint, spec.tracking.uri)
    source = run_id or str(path.resolve())
    return {"harness.pretrained_from": source, "harness.pretrained_checkpoint": str(path.resolve()),
            "harness.transfer": spec.backbone.transfer}  # fmt: skip
