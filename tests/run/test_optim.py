"""The papers' optimisers: SGD with momentum (MBT), parameter groups with their own lr (LAVISH, AVBERT), and the
per-class loss reduction (scenic's summed sigmoid loss), against written-out references of the official rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import ConfigError, RunSpec
from harness.run.engines.torch_engine import TorchEngine
from harness.run.trial import build_dataset, build_model, run_trial


def _spec(tiny_run: dict, **train) -> RunSpec:
    tiny_run["train"].update(train)
    return RunSpec.from_dict(tiny_run)


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)
    method = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    return nn.ModuleDict({"method": method, "task": nn.ModuleDict({"head": nn.Linear(4, 2)})})


def _grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_is_scenic_momentum(tiny_run, nesterov):
    """optax.sgd(lr, momentum, nesterov) as scenic's 'momentum' optimiser builds it: t <- g + m t; update = -lr t
    (nesterov: -lr (g + m t)), written out; plus L2 weight decay on matrices only (g + wd p)."""
    spec = _spec(tiny_run, optimizer="sgd", momentum=0.9, nesterov=nesterov, lr=0.5, weight_decay=0.01)
    model = _model()
    opt = TorchEngine(spec, "cpu").optimizer(model)
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    trace = {n: torch.zeros_like(p) for n, p in ref.items()}
    for step in range(3):
        _grads(model, step)
        for n, p in model.named_parameters():
            g = p.grad + (0.01 * ref[n] if p.ndim >= 2 else 0)
            trace[n] = g + 0.9 * trace[n]
            ref[n] = ref[n] - 0.5 * (g + 0.9 * trace[n] if nesterov else trace[n])
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=1e-6, atol=1e-6, msg=n)


def test_lr_groups_give_each_group_its_lr_and_the_schedule_scales_all(tiny_run):
    """LAVISH's AVE code: the head (mlp_class) at lr_mlp, everything else at lr; warmup/cosine scale both."""
    spec = _spec(tiny_run, lr=5e-5, min_lr=5e-6, warmup_epochs=1.0, epochs=2,
                 lr_groups=[{"match": "task.*", "lr": 4e-6, "weight_decay": 0.0}])  # fmt: skip
    model = _model()
    engine = TorchEngine(spec, "cpu")
    opt = engine.optimizer(model)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["lr"] == (4e-6 if name.startswith("task.") else 5e-5), name
        assert g["weight_decay"] == (0.05 if p.ndim >= 2 and name.startswith("method.") else 0.0), name
    assert opt.param_groups[0]["lr"] == 5e-5  # the default group first: what the `lr` metric logs
    sched = engine.schedule(opt, steps_per_epoch=4)  # 4 warmup steps of 8
    for _ in range(8):
        opt.step()
        sched.step()
    head = next(g for g in opt.param_groups if g["lr"] != opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6)  # the end of the cosine: min_lr
    assert head["lr"] == pytest.approx(4e-6 * 5e-6 / 5e-5)  # the same factor on the head's peak


def test_lr_groups_first_match_wins_and_a_group_must_match(tiny_run):
    spec = _spec(tiny_run, lr_groups=[{"match": ["task.head.bias"], "lr": 1.0}, {"match": "task.*", "lr": 2.0}])
    opt = TorchEngine(spec, "cpu").optimizer(model := _model())
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    lrs = {n: group[id(p)]["lr"] for n, p in model.named_parameters()}
    assert lrs["task.head.bias"] == 1.0 and lrs["task.head.weight"] == 2.0 and lrs["method.0.weight"] == 1e-3
    spec = _spec(tiny_run, lr_groups=[{"match": "method.adapters.*", "lr": 1.0}])
    with pytest.raises(ValueError, match=r"lr_groups\[0\]\.match 'method.adapters.\*' matches no trainable.*method\.0"):
        TorchEngine(spec, "cpu").optimizer(_model())


@pytest.mark.parametrize(
    ("train", "task", "message"),
    [
        ({"nesterov": True}, None, r"train: nesterov=true applies to optimizer: sgd only"),
        ({"optimizer": "sgd", "nesterov": True, "momentum": 0.0}, None, r"nesterov=true needs momentum > 0"),
        ({"optimizer": "adam"}, None, r"train\.optimizer.*'adamw' or 'sgd'"),
        ({"loss_reduction": "sum"}, None, r"train\.loss_reduction: 'sum' has no effect with task 'classification'"),
        ({}, {"name": "multilabel", "sum_over_classes": True}, r"replaced by train\.loss_reduction"),
        ({"lr_groups": [{"match": "task.*"}]}, None, r"train\.lr_groups\[0\]\.lr: missing required key"),
    ],
)
def test_config_errors_name_the_key(tiny_run, train, task, message):
    if task:
        tiny_run["task"] = task
    with pytest.raises(ConfigError, match=message):
        _spec(tiny_run, **train)


def test_summed_sigmoid_loss_is_scenics(tiny_run):
    """scenic ``weighted_sigmoid_cross_entropy``: sum over classes of the smoothed BCE, divided by the batch size;
    ``train.loss_reduction: sum`` through the trial's own task, against that formula written out."""
    tiny_run["task"] = {"name": "multilabel", "label_smoothing": 0.3}
    spec = _spec(tiny_run, loss_reduction="sum")
    _, task = build_model(spec, build_dataset(spec).spec)
    assert task.loss_reduction == "sum"
    c = task.num_classes
    z, y = torch.randn(5, c), (torch.rand(5, c) < 0.3).float()
    t = y * (1 - 0.3) + 0.3 / c
    scenic = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z)).sum() / 5
    out = {"embedding": torch.randn(5, task.head.in_features)}
    with torch.no_grad():
        task.head.weight.zero_()
        task.head.bias.copy_(z[0])  # logits = z[0] for every clip: the loss through the task's own path
    zz = z[0].expand(5, -1)
    scenic = -(t * F.logsigmoid(zz) + (1 - t) * F.logsigmoid(-zz)).sum() / 5
    torch.testing.assert_close(task.loss(out, {"label": y}), scenic)
    task.loss_reduction = "mean"  # the default: C times smaller
    torch.testing.assert_close(task.loss(out, {"label": y}) * c, scenic)


def test_a_trial_trains_with_sgd_and_groups(tiny_run):
    """End to end: SGD with momentum and a head group train a finite loss (the engine's whole path)."""
    spec = _spec(tiny_run, optimizer="sgd", lr=0.05, nesterov=True, lr_groups=[{"match": "task.*", "lr": 0.1}])
    final = run_trial(spec, type("Quiet", (), {"start": lambda s, i: None, "report": lambda s, m, k: None})())
    assert final["train/loss"] == final["train/loss"] and 0 <= final["test/top1"] <= 100
