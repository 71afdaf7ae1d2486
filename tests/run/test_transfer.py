"""Pretraining with av_pretrain, then transfer (``harness/run/transfer.py``): the checkpoint's method weights load
by name, linear evaluation trains the head only and leaves the backbone (BatchNorm statistics included) as loaded,
the run's tags name the source, and another architecture is refused."""

from __future__ import annotations

import pytest
import torch

from harness.api import CheckpointError
from harness.config import RunSpec
from harness.run.engines.torch_engine import TorchEngine
from harness.run.reporting import LocalCheckpoints, PrintReporter
from harness.run.transfer import transfer_tags
from harness.run.trial import build_dataset, build_model, run_trial

CNN = {"name": "cnn_tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "cnn_width": 4}


class Recorder(PrintReporter):
    def start(self, info: dict) -> None:
        self.info = info


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache) -> tuple[dict, object]:
    """A one-epoch av_pretrain run on 2 clips per sample, checkpointed locally: (its run dict, the folder)."""
    folder = tmp_path_factory.mktemp("pretrain")
    run = {
        "name": "pre",
        "dataset": {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16, "clips_per_sample": 2},
        "task": {"name": "av_pretrain", "negatives": 3},
        "backbone": dict(CNN),
        "method": {"name": "lowrank"},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "threads": 1},
        "cache_dir": str(cache),
    }
    final = run_trial(RunSpec.from_dict(run), LocalCheckpoints(PrintReporter(), folder))
    assert {"test/mep_acc", "test/cpp_acc", "val/mep_loss", "train/loss"} <= set(final)
    return run, folder


def transfer_run(pretrained, **backbone) -> dict:
    run, folder = pretrained
    return {**run, "name": "transfer", "task": {"name": "classification"},
            "dataset": {**run["dataset"], "train_fraction": 0.5},
            "backbone": {**CNN, "checkpoint": str(folder), **backbone}}  # fmt: skip


def test_linear_evaluation_loads_and_keeps_the_pretrained_backbone(pretrained):
    spec = RunSpec.from_dict(transfer_run(pretrained, transfer="linear"))
    state = torch.load(pretrained[1] / "state.pt", weights_only=True)["model"]
    data = build_dataset(spec)
    assert len(data.splits["train"]) == 24  # train_fraction 0.5 of 48
    method, task = build_model(spec, data.spec)
    loaded = method.state_dict()
    for k, v in loaded.items():
        assert torch.equal(v, state[f"method.{k}"]), k
    assert not any(p.requires_grad for p in method.parameters())
    head = {k: v.clone() for k, v in task.state_dict().items()}
    TorchEngine(spec).fit(method, task, data, lambda m, s: None)
    after = method.state_dict()
    assert all(torch.equal(loaded[k], after[k]) for k in loaded)  # weights and BatchNorm running statistics
    assert any(not torch.equal(head[k], v) for k, v in task.state_dict().items())  # the head trained


def test_transfer_tags_and_trainable_count(pretrained):
    spec = RunSpec.from_dict(transfer_run(pretrained, transfer="linear"))
    assert transfer_tags(spec) == {
        "harness.pretrained_from": str((pretrained[1] / "state.pt").resolve()),
        "harness.pretrained_checkpoint": str((pretrained[1] / "state.pt").resolve()),
        "harness.transfer": "linear",
    }
    rec = Recorder()
    run_trial(spec, rec)
    assert rec.info["tags"]["harness.pretrained_from"] == str((pretrained[1] / "state.pt").resolve())
    assert rec.info["metrics"]["model/params_trainable"] == 16 * 18 + 18  # the classification head only


def test_fine_tuning_trains_the_backbone_and_another_architecture_is_refused(pretrained):
    spec = RunSpec.from_dict(transfer_run(pretrained))
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    assert all(p.requires_grad for p in method.parameters())
    other = transfer_run(pretrained)
    other["method"] = {"name": "lowrank", "sharing": "none"}
    with pytest.raises(CheckpointError, match="not the same method architecture"):
        build_model(RunSpec.from_dict(other), data.spec)


def test_mlflow_run_id_resolves_to_its_checkpoint(pretrained, tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.run.transfer import resolve

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("pre"), tags={"harness.checkpoint": str(pretrained[1])})
    assert resolve(f"mlflow:{run.info.run_id}", uri) == (pretrained[1] / "state.pt", run.info.run_id)
    with pytest.raises(CheckpointError, match="no run 'nope'"):
        resolve("mlflow:nope", uri)


def test_a_pretraining_sweep_run_is_found_by_its_params(pretrained, tmp_path):
    """mlflow:EXPERIMENT?KEY=VALUE: the finished run with those params and this run's method, backbone and seed."""
    from mlflow.tracking import MlflowClient

    from harness.run.transfer import resolve
    from harness.tracking import log_params, run_params

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("pretraining")
    run, folder = pretrained
    ids = {}
    for sampling in ("random", "similar"):
        pre = RunSpec.from_dict({**run, "task": {**run["task"], "negative_sampling": sampling}})
        r = client.create_run(exp, tags={"harness.checkpoint": str(folder / sampling)})
        log_params(client, r.info.run_id, run_params(pre.to_dict()))
        client.set_terminated(r.info.run_id)
        ids[sampling] = r.info.run_id
    spec = RunSpec.from_dict(transfer_run(pretrained, transfer="linear"))
    got = resolve("mlflow:pretraining?task.negative_sampling=similar", uri, spec)
    assert got == (folder / "similar", ids["similar"])
    other = RunSpec.from_dict({**transfer_run(pretrained), "seed": 1})
    with pytest.raises(CheckpointError, match="seed=1"):
        resolve("mlflow:pretraining?task.negative_sampling=similar", uri, other)
