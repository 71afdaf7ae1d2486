"""The frozen-prefix activation cache: same outputs and gradients as without it, hits after the first pass, refusals.

Built on real runs of the tiny synthetic default: the strict linear probe (``frozen``, ``train_norms: false``),
whose whole output is cached, and LAVISH, whose tokeniser is the frozen prefix (the opt-in ``frozen_prefix``
attribute set on the instance, as the method class would declare it).
"""

from __future__ import annotations

import pytest
import torch

from harness.config import RunSpec
from harness.run import frozen_cache
from harness.run.trial import build_dataset, build_model


def built(tiny_run: dict, method: dict, **train):
    spec = RunSpec.from_dict({**tiny_run, "method": method, "train": {**tiny_run["train"], **train}})
    data = build_dataset(spec)
    m, task = build_model(spec, data.spec)
    return spec, data, m, task


def step_grads(method, task, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of every trainable parameter after one backward."""
    params = {f"{k}:{n}": p for k, mod in (("m", method), ("t", task)) for n, p in mod.named_parameters()}
    for p in params.values():
        p.grad = None
    loss = task.loss(method(batch), batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in params.items() if p.requires_grad}


def test_strict_probe_caches_the_whole_method(tiny_run):
    spec, data, method, task = built(tiny_run, {"name": "frozen", "train_norms": False})
    train = data.splits["train"]
    batches = list(train.batches(8))[:2]
    want = [step_grads(method, task, b) for b in batches]
    cache = frozen_cache.attach(method, spec, data, verbose=False)
    assert cache is not None and cache.part is method
    first = [step_grads(method, task, b) for b in batches]  # fills the cache
    assert cache.misses == 16 and cache.hits == 0
    again = [step_grads(method, task, b) for b in batches]  # answered from it
    assert cache.hits == 16 and cache.misses == 16
    for (lw, gw), (l1, _), (l2, g2) in zip(want, first, again):
        assert lw == pytest.approx(l1, rel=1e-6) and l1 == l2
        assert set(gw) == set(g2) and all(n.startswith("t:") for n in gw)  # only the head trains
        for n in gw:
            torch.testing.assert_close(g2[n], gw[n], rtol=1e-5, atol=1e-6)
    # A masked evaluation pass is a different entry, not a hit of the unmasked one.
    masked = dict(batches[0], audio_present=torch.zeros(8, dtype=torch.bool))
    with torch.no_grad():
        out = method(masked)["embedding"]
    assert cache.misses == 24
    frozen_cache.detach_cache(cache)
    with torch.no_grad():
        torch.testing.assert_close(out, method(masked)["embedding"])


def test_lavish_caches_its_tokeniser_and_adapters_still_train(tiny_run):
    spec, data, method, task = built(tiny_run, {"name": "lavish"})
    batch = next(data.splits["train"].batches(8))
    want = step_grads(method, task, batch)
    method.frozen_prefix = "tokens"  # the opt-in a method class declares
    cache = frozen_cache.attach(method, spec, data, verbose=False)
    assert cache is not None and cache.part is method.tokens
    step_grads(method, task, batch)
    got = step_grads(method, task, batch)
    assert cache.hits == 8
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert any(n.startswith("m:adapters") for n in got[1]) and set(got[1]) == set(want[1])
    for n in want[1]:
        torch.testing.assert_close(got[1][n], want[1][n], rtol=1e-5, atol=1e-6)


def test_refusals(tiny_run):
    spec, data, method, _ = built(tiny_run, {"name": "vanilla"})
    assert frozen_cache.attach(method, spec, data, verbose=False) is None  # trains, declares no prefix
    spec, data, method, _ = built(tiny_run, {"name": "frozen", "train_norms": False}, mixup_alpha=0.5)
    assert frozen_cache.attach(method, spec, data, verbose=False) is None  # augmented inputs
    spec = RunSpec.from_dict({**tiny_run, "method": {"name": "frozen", "train_norms": False},
                              "backbone": {**tiny_run["backbone"], "drop_path": 0.1}})  # fmt: skip
    method, _ = build_model(spec, data.spec)
    name, reason = frozen_cache.cacheable_part(method)
    assert name is None and "DropPath" in reason
    spec, data, method, _ = built(tiny_run, {"name": "frozen"})  # trainable LayerNorms in every block
    method.frozen_prefix = "blocks"
    name, reason = frozen_cache.cacheable_part(method)
    assert name is None and "trainable" in reason


def test_saved_cache_is_reused_by_a_later_trial_and_keyed_by_weights(tiny_run, tmp_path):
    spec, data, method, task = built(tiny_run, {"name": "frozen", "train_norms": False})
    batch = next(data.splits["train"].batches(8))
    cache = frozen_cache.attach(method, spec, data, directory=tmp_path, verbose=False)
    with torch.no_grad():
        want = method(batch)["embedding"]
    assert cache.save() is not None
    _, _, later, _ = built(tiny_run, {"name": "frozen", "train_norms": False})  # same seed: same frozen weights
    reused = frozen_cache.attach(later, spec, data, directory=tmp_path, verbose=False)
    assert reused.loaded and reused.key == cache.key
    with torch.no_grad():
        torch.testing.assert_close(later(batch)["embedding"], want)
    assert reused.hits == 8 and reused.misses == 0
    _, _, other, _ = built({**tiny_run, "seed": 1}, {"name": "frozen", "train_norms": False})  # other weights
    fresh = frozen_cache.attach(other, spec, data, directory=tmp_path, verbose=False)
    assert fresh.key != cache.key and not fresh.loaded


def test_run_trial_with_the_cache_trains_the_same_and_saves_it(tiny_run, capsys):
    # train.frozen_cache in a real trial: the same metrics as without it, and a file the next trial reuses.
    from harness.run.trial import cache_dir, run_trial

    run = {**tiny_run, "method": {"name": "frozen", "train_norms": False}, "train": {**tiny_run["train"], "epochs": 2}}
    plain = run_trial(RunSpec.from_dict(run))
    spec = RunSpec.from_dict({**run, "train": {**run["train"], "frozen_cache": True}})
    cached = run_trial(spec)
    for k in ("train/loss", "val/top1", "test/top1", "test/top1:audio_only"):
        assert cached[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-6), k
    files = list((cache_dir(spec) / "activations").glob("*.safetensors"))
    assert len(files) == 1
    err = capsys.readouterr().err
    assert "hits" in err and " 0 hits" not in err
