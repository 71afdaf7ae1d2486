"""The torch engine's speed settings on CPU at tiny size: precision, loss scaling, gradient accumulation, activation
checkpointing, compile, and the perf/* figures (harness/run/perf.py). The GPU side is in tests marked ``gpu``."""

from __future__ import annotations

import pytest
import torch

from harness.config import ConfigError, RunSpec
from harness.run.perf import checkpoint_activations, mfu, peak_tflops, resolve_precision
from harness.run.trial import build_dataset, build_model, run_trial
from harness.testing.contract import TINY_BACKBONE, TINY_SPEC, build, make_batch, weighted_sum


class Recorder:
    def __init__(self):
        self.info, self.reports = None, []

    def start(self, info):
        self.info = info

    def report(self, metrics, step):
        self.reports.append((step, dict(metrics)))


def _trial(tiny_run: dict, **train) -> tuple[dict, Recorder]:
    tiny_run["train"].update(train)
    rec = Recorder()
    return run_trial(RunSpec.from_dict(tiny_run), rec), rec


def test_precision_resolves_per_device():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trials_train_and_tag_their_precision(tiny_run, precision):
    fp32, _ = _trial(dict(tiny_run, train=dict(tiny_run["train"])), precision="fp32")
    final, rec = _trial(tiny_run, precision=precision)
    assert rec.info["tags"]["harness.precision"] == precision
    assert 0 <= final["test/top1"] <= 100 and final["train/loss"] == pytest.approx(fp32["train/loss"], rel=0.05)


def test_grad_accum_takes_the_same_steps(tiny_run):
    tiny_run["method"] = {"name": "vanilla"}  # nothing depends on the batch's size (no batch norm)
    one, _ = _trial(dict(tiny_run, train=dict(tiny_run["train"])), grad_accum=1)
    two, _ = _trial(tiny_run, grad_accum=4)
    for key in ("train/loss", "val/top1", "test/top1"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-4), key


def test_grad_accum_must_divide_the_batch(tiny_run):
    tiny_run["train"]["grad_accum"] = 3
    with pytest.raises(ConfigError, match="grad_accum"):
        RunSpec.from_dict(tiny_run)


@pytest.mark.parametrize("name", ["mbt", "lavish"])
def test_activation_checkpointing_keeps_gradients_and_saves_less(name):
    from harness.models.backbones import BackboneConfig

    batch = make_batch(TINY_SPEC, [True] * 2, [True] * 2)
    grads, saved = [], []
    for recompute in (False, True):
        model = build(name, {}, BackboneConfig(**TINY_BACKBONE), TINY_SPEC)
        with torch.no_grad():  # off the zero-initialised gates, so that every parameter gets a gradient
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
        if recompute:
            assert checkpoint_activations(model) > 0
        size = [0]

        def pack(t, size=size):
            size[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = weighted_sum(model(batch))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        saved.append(size[0])
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-6, msg=key)
    assert saved[1] < 0.7 * saved[0], saved


def test_activation_checkpointing_refuses_a_method_without_timm_layers():
    from harness.models.backbones import BackboneConfig

    with pytest.raises(ValueError, match="activation_checkpointing"):
        checkpoint_activations(build("lowrank", {}, BackboneConfig(**TINY_BACKBONE), TINY_SPEC))


def test_compiled_trial_matches_eager(tiny_run):
    tiny_run["method"] = {"name": "late"}  # the engine's wiring; every method's graph: tests/methods/test_contract.py
    eager, _ = _trial(dict(tiny_run, train=dict(tiny_run["train"])))
    compiled, _ = _trial(tiny_run, compile=True, compile_backend="eager")
    for key in ("train/loss", "val/top1", "test/top1"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-3), key


@pytest.mark.slow  # inductor's C++ code generation: minutes on 2 cores
def test_compiled_trial_with_inductor(tiny_run):
    eager, _ = _trial(dict(tiny_run, train=dict(tiny_run["train"])))
    compiled, _ = _trial(tiny_run, compile=True)
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-3)


def test_compile_and_the_frozen_cache_are_refused_together(tiny_run):
    tiny_run["train"].update(compile=True, frozen_cache=True)
    with pytest.raises(ConfigError, match="frozen_cache"):
        RunSpec.from_dict(tiny_run)


def test_mfu_from_measured_flops_and_a_given_peak(tiny_run):
    final, rec = _trial(tiny_run, peak_tflops=0.5)
    per_clip = rec.info["metrics"]["model/train_gflops"]
    samples_per_s = tiny_run["train"]["batch_size"] / (final["perf/step_ms"] / 1e3)
    assert final["perf/mfu"] == pytest.approx(mfu(per_clip, samples_per_s, 0.5))
    assert final["perf/mfu"] == pytest.approx(final["perf/train_tflops"] / 0.5)
    assert 0 < final["perf/mfu"] < 1


def test_peak_table(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_tflops(cuda, "bf16") == 989.4 and peak_tflops(cuda, "fp32") == 494.7
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_tflops(cuda, "bf16") == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    assert peak_tflops(cuda, "bf16") is None and peak_tflops(cuda, "bf16", override=100.0) == 100.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert peak_tflops(cuda, "bf16") == 362.1  # not L4's
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200 NVL")
    assert peak_tflops(cuda, "bf16") == 835.5  # not the SXM part's
    assert peak_tflops(torch.device("cpu"), "fp32") is None


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_trial(tiny_run, precision):
    """On a GPU: mixed precision with fused AdamW and TF32, a compiled method, accumulation and recomputation."""
    tiny_run["train"].update(precision=precision, grad_accum=2, activation_checkpointing=True, compile=True)
    final, rec = _trial(tiny_run)
    assert rec.info["tags"]["harness.precision"] == precision and "perf/mfu" in final
    assert torch.get_float32_matmul_precision() == "high"


class StateRecorder(Recorder):
    """A ``harness.api.Checkpoints`` in memory: keeps every state it is handed; restores a chosen one."""

    def __init__(self, restore_from: dict | None = None):
        super().__init__()
        self.states, self.restore_from = [], restore_from

    def restore(self):
        return self.restore_from

    def report(self, metrics, step, state=None):
        super().report(metrics, step)
        self.states.append((step, state))


def test_checkpoints_every_k_epochs_hold_only_what_resume_needs(tiny_run):
    tiny_run["method"] = {"name": "lavish"}  # a frozen backbone: its weights are never saved
    tiny_run["train"].update(epochs=3, checkpoint_every=2)
    spec = RunSpec.from_dict(tiny_run)
    whole = StateRecorder()
    expected = run_trial(spec, whole)
    assert [(step, state is not None) for step, state in whole.states] == [(0, False), (1, True), (2, True),
                                                                           (3, True)]  # fmt: skip
    state = whole.states[1][1]
    method, _ = build_model(spec, build_dataset(spec).spec)
    frozen = {f"method.{n}" for n, p in method.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(state["model"]) and any(k.startswith("method.adapters") for k in state["model"])
    assert all(v.device.type == "cpu" for v in state["model"].values())
    resumed = run_trial(spec, StateRecorder(restore_from=state))  # after epoch 1, as if the trial had died in 2
    for key in ("train/loss", "val/top1", "test/top1"):
        assert resumed[key] == expected[key], key
