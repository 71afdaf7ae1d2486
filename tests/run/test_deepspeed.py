"""The ``deepspeed`` engine: 2-rank gloo trials (ZeRO 0 and 2) of a real sweep into a temporary MLflow store."""

from __future__ import annotations

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.config import ConfigError, RunSpec
from harness.registry import ENGINES
from harness.run.engines.torch_engine import TorchEngine
from harness.run.trial import build_dataset, build_model, model_cost
from harness.sweep.driver import run_sweep


def _run(tiny_run: dict, **engine) -> dict:
    """The shared tiny run (tests/conftest.py) with its own name and the given engine section."""
    return {**tiny_run, "name": "t_ds", "engine": engine, "train": {**tiny_run["train"], "threads": None}}


def test_engine_settings_are_validated_with_the_engine(tiny_run):
    spec = RunSpec.from_dict(_run(tiny_run, name="deepspeed", workers=2, zero_stage=2))
    assert (spec.engine.workers, spec.engine.zero_stage, spec.train.precision) == (2, 2, "auto")
    assert spec.to_dict()["train"]["grad_accum"] == 1 and "grad_accum" not in spec.to_dict()["engine"]
    with pytest.raises(ConfigError) as e:
        RunSpec.from_dict(_run(tiny_run, name="deepspeed", workers=3, zero_stage=4))
    assert {k for k, _ in e.value.errors} == {"engine.zero_stage"}
    with pytest.raises(ConfigError) as e:  # 8 clips do not split over 3 ranks
        RunSpec.from_dict(_run(tiny_run, name="deepspeed", workers=3))
    assert e.value.errors[0][0] == "train.batch_size" and "3" in e.value.errors[0][1]
    with pytest.raises(ConfigError) as e:  # 8 clips over 2 ranks x 4 micro-batches: 1 each, fine; x 8: not
        RunSpec.from_dict({**_run(tiny_run, name="deepspeed", workers=2), "train": {**tiny_run["train"],
                                                                                    "grad_accum": 8}})  # fmt: skip
    assert e.value.errors[0][0] == "train.batch_size" and "16" in e.value.errors[0][1]
    with pytest.raises(ConfigError) as e:  # one spelling for both engines, and where the old one went
        RunSpec.from_dict(_run(tiny_run, name="deepspeed", precision="bf16", grad_accum=2))
    assert "engine.precision is now train.precision" in str(e.value) and "train.grad_accum" in str(e.value)
    with pytest.raises(ConfigError) as e:
        RunSpec.from_dict({**_run(tiny_run, name="deepspeed"), "train": {**tiny_run["train"], "compile": True}})
    assert e.value.errors[0][0] == "train.compile"
    with pytest.raises(ConfigError) as e:  # the torch engine has no workers
        RunSpec.from_dict(_run(tiny_run, name="torch", workers=2))
    assert e.value.errors[0][0] == "engine.workers"


def test_auto_is_torch_without_cuda(tiny_run):
    import torch

    engine = ENGINES.get("auto").build(RunSpec.from_dict(_run(tiny_run, name="auto")))
    assert type(engine).__name__ == ("DeepSpeedEngine" if torch.cuda.is_available() else "TorchEngine")
    assert isinstance(engine, TorchEngine)


@pytest.mark.ray
@pytest.mark.slow  # ~90 s warm on 2 cores (two 2-rank trials), ~140 s when DeepSpeed first JIT-compiles its comm op
def test_two_rank_trials_with_zero_0_and_2_log_like_the_torch_engine(tiny_run, tmp_path):
    sweep = {
        **_run(tiny_run, name="deepspeed", workers=2),
        "search": {"variants": [{"engine.zero_stage": [0, 2]}]},
        "tune": {"max_concurrent_trials": 1},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from harness.config import load_config

    assert run_sweep(load_config(path), uri, str(tmp_path / "ray")) == 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_ds")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.params["engine.zero_stage"] for c in children) == ["0", "2"]
    spec = RunSpec.from_dict(_run(tiny_run))
    data = build_dataset(spec)
    cost = model_cost(*build_model(spec, data.spec), data.spec, batch_size=4)  # 8 clips over 2 ranks
    for run in children:
        m = run.data.metrics
        assert run.info.status == "FINISHED", run.data.tags.get("harness.error")
        assert run.data.params["engine.name"] == "deepspeed" and run.data.params["engine.workers"] == "2"
        assert run.data.tags["harness.engine"] == "deepspeed" and run.data.tags["harness.workers"] == "2"
        assert {k: m[k] for k in cost} == cost
        assert [h.step for h in client.get_metric_history(run.info.run_id, "val/top1")] == [0]
        for key in ("train/loss", "val/top5", "test/top1", "test/top1:audio_only", "test/top1:video_only",
                    "perf/train_samples_per_s", "perf/peak_mem_mb", "perf/wall_s", "lr"):  # fmt: skip
            assert key in m, key
        assert 0 < m["train/loss"] < 10 and 0 <= m["test/top1"] <= 100


def test_micro_batches_split_every_entry_kind():
    # Gradient accumulation splits tensors, id lists and multi-head label dicts along the same rows.
    from harness.run.engines.common import micro_batches as _chunks

    batch = {
        "video": torch.arange(5),
        "id": list("abcde"),
        "label": {"verb": torch.arange(5), "noun": torch.arange(5) + 10},
    }
    parts = _chunks(batch, 2)
    assert [p["id"] for p in parts] == [["a", "b", "c"], ["d", "e"]]
    assert parts[1]["label"]["noun"].tolist() == [13, 14] and parts[1]["video"].tolist() == [3, 4]
    with pytest.raises(ValueError, match="train.grad_accum=8"):  # never an empty micro-batch
        _chunks(batch, 8)
