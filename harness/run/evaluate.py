"""``harness eval``: score a trained model from its checkpoint and log the figures as a child run of the original.

What is evaluated is the training checkpoint the engine writes after every epoch (``TorchEngine.state``): its
``model`` entry (method + task head as trained, the last epoch's being what the final test scored: format 2 keeps
only what training changed, the frozen weights are rebuilt from the spec's backbone as in training) and its ``spec``
entry (the resolved run as JSON). It is read with ``torch.load(weights_only=True)``: tensors, numbers and strings
only, no code runs. Where a run keeps it, its MLflow run says in the tag ``harness.checkpoint``: ``harness run``'s
local folder (``.harness/checkpoints/<name>-<digest>``), a sweep trial's Tune checkpoint in the sweep's storage.
``deepspeed`` trials keep ZeRO shards in DeepSpeed's own format, which this does not read.

The model is rebuilt from the spec (``--set`` overrides it, e.g. ``dataset.test_clips=4`` or another
``dataset.root``; ``--config FILE`` replaces it), its state loaded strictly, and the split is scored by the
engine's own evaluation: every view of a multi-clip test split averaged per clip, then with the video masked
(``:audio_only``) and with the audio masked (``:video_only``). With the same spec this is the code path of the
run's final test, so the numbers equal the run's ``test/*`` exactly.

The figures go to a new MLflow run, a child of the evaluated run (``mlflow.parentRunId``; sweep reports read the
sweep's children only, so an eval never enters a sweep's table), tagged ``harness.eval_of`` and
``harness.checkpoint``, with the eval spec as params; evaluating a bare checkpoint file with no run to attach to
opens a top-level run instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from harness.config import ConfigError, RunSpec, load_config, resolve_run
from harness.config.files import apply_overrides, parse_overrides
from harness.run.engines.common import load_trainable_state
from harness.run.engines.torch_engine import TorchEngine
from harness.run.trial import build_dataset, build_model, deterministic, model_cost, run_tags, seed_everything
from harness.tracking import MlflowReporter, tracking_uri

CHECKPOINT_TAG = "harness.checkpoint"  # where a run's training checkpoint is (a folder holding state.pt)


def read_state(path: Path) -> dict:
    """The training checkpoint at ``path`` (``state.pt``, or a folder holding it), read with ``weights_only=True``.

    Raises:
        ConfigError: no such file, or not a harness training checkpoint.
    """
    file = path / "state.pt" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError([("CHECKPOINT", f"{file} is not a file (a state.pt, or a folder that holds one)")])
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError([("CHECKPOINT", f"{file} holds no training state (a 'model' entry); DeepSpeed checkpoints "
                                          "are not read by harness eval")])  # fmt: skip
    return state


def eval_spec(state: dict, overrides: list[str] = (), config: str | None = None) -> RunSpec:
    """The run to evaluate: the checkpoint's own spec with ``overrides``, or ``config`` (a run file) with them.

    Raises:
        ConfigError: a bad override, or a checkpoint without a spec and no ``config``.
    """
    if config is not None:
        spec = load_config(config, overrides)
        if not isinstance(spec, RunSpec):
            raise ConfigError([("--config", f"{config} is a sweep; give a run file (one configuration)")])
        return spec
    if "spec" not in state:
        raise ConfigError([("CHECKPOINT", "this checkpoint carries no spec (written before harness eval existed); "
                                          "pass the run's file with --config")])  # fmt: skip
    raw = json.loads(state["spec"])
    parsed, errors = parse_overrides(list(overrides))
    origins: dict[str, str] = {}
    errors += apply_overrides(raw, parsed, origins)
    if errors:
        raise ConfigError(errors)
    return resolve_run(raw, origins)


def score(spec: RunSpec, state: dict, split: str = "test") -> tuple[dict[str, float], dict[str, str], dict]:
    """``<split>/*`` metrics of the checkpoint's model on ``split``, with both modalities and with each masked.

    Returns:
        (metrics, the run's tags, the model's cost metrics).

    Raises:
        ConfigError: the checkpoint's weights do not fit the model the spec builds (names the first keys).
    """
    # Format 1 holds every weight, so the backbone's init or file is not read (nor needed). Format 2 (what the
    # engines write now) holds what training changed: the frozen weights come from the spec's backbone, as in training.
    full = state.get("format", 1) == 1
    build = replace(spec, backbone=spec.backbone.model_copy(update={"checkpoint": None, "pretrained": "none"}))
    build = build if full else spec
    engine = TorchEngine(spec)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    with deterministic():
        seed_everything(spec.seed)
        data = build_dataset(spec)
        method, task = build_model(build, data.spec)
        model = torch.nn.ModuleDict({"method": method, "task": task})
        try:
            if full:
                model.load_state_dict(state["model"])
            else:
                load_trainable_state(model, state["model"])
        except (RuntimeError, KeyError) as e:  # missing, unexpected or differently shaped weights: torch names them
            detail = " ".join(str(e).split("\n", 1)[-1].split())[:600]
            raise ConfigError([("CHECKPOINT", f"its weights do not fit the model of this spec: {detail}")]) from e
        method.to(engine.device)
        task.to(engine.device)
        part = data.splits[split]
        metrics = {f"{split}/{k}": v for k, v in engine.evaluate(method, task, part).items()}
        for present, masked in (("audio_only", "video"), ("video_only", "audio")):
            found = engine.evaluate(method, task, part, mask=masked)
            metrics.update({f"{split}/{k}:{present}": v for k, v in found.items()})
        return metrics, run_tags(spec, engine.device, data, task), model_cost(method, task, data.spec)


def resolve_target(target: str, uri: str) -> tuple[Path, object | None]:
    """``RUN_ID | CHECKPOINT`` -> (checkpoint path, the MLflow run it belongs to or None)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    path = Path(target)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   f"tags.`{CHECKPOINT_TAG}` = '{folder.resolve()}'")  # fmt: skip
        return path, (found[0] if found else None)
    try:
        run = client.get_run(target)
    except MlflowException as e:
        raise ConfigError([("RUN_ID", f"{target!r} is neither a checkpoint file or folder nor a run in {uri}")]) from e
    where = run.data.tags.get(CHECKPOINT_TAG)
    if where is None:
        raise ConfigError([("RUN_ID", f"run {target} has no {CHECKPOINT_TAG} tag (a run logged before harness eval, "
                                      "or a deepspeed trial): pass its checkpoint folder instead")])  # fmt: skip
    return Path(where), run


def run_eval(target: str, overrides: list[str] = (), uri: str | None = None, config: str | None = None,
             split: str = "test") -> dict[str, float]:  # fmt: skip
    """``harness eval``: score the model of ``target`` (an MLflow run id or a checkpoint) and log a child run.

    Returns:
        The metrics (``<split>/<metric>``, ``:audio_only``, ``:video_only``).
    """
    uri = tracking_uri(uri)
    path, original = resolve_target(target, uri)
    state = read_state(path)
    spec = eval_spec(state, overrides, config)
    if split not in ("train", "val", "test"):
        raise ConfigError([("--split", f"must be train, val or test, got {split!r}")])
    if original is not None:  # the child run lives in the original's experiment
        from mlflow.tracking import MlflowClient

        name = MlflowClient(uri).get_experiment(original.info.experiment_id).name
        spec.tracking = spec.tracking.model_copy(update={"experiment": name})
    metrics, tags, cost = score(spec, state, split)
    folder = (path if path.is_dir() else path.parent).resolve()
    extra = {CHECKPOINT_TAG: str(folder), "harness.eval_split": split}
    if original is not None:
        extra["harness.eval_of"] = original.info.run_id
    parent = original.info.run_id if original is not None else None
    with MlflowReporter.open(spec, uri, parent_run_id=parent, tags=extra) as reporter:
        reporter.start({"tags": tags, "metrics": cost})
        reporter.report(metrics, step=0)
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(shown)
    of = f" (child of {original.info.run_id})" if original is not None else ""
    print(f"logged to MLflow run {reporter.run_id}{of} in experiment '{reporter.experiment}' at {uri}", file=sys.stderr)
    return metrics
