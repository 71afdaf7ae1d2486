"""The method contract (DESIGN.md), checked for every registered method and the variants of its options."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.backbones import BackboneConfig
from harness.complexity import count_params
from harness.registry import METHODS

# Option variants worth running the whole contract on; every registered name also runs with its defaults.
VARIANTS = {
    "mbt": [{"readout": "gap"}, {"shared_weights": True}, {"fusion_layer": 0, "bottleneck_tokens": 1}],
    "vanilla": [{"readout": "gap"}, {"fusion_layer": 1}],
    "cross": [{"readout": "gap"}, {"fusion_layer": 1}],
    "lavish": [
        {"audio_embed": "spectrogram", "latent_init": "zeros"},
        {"bn": False, "ln_before": False, "ln_post": False, "gate_audio": False, "train_norms": True, "groups": 1},
    ],
    "avish": [{"audio_embed": "spectrogram", "train_norms": True}, {"backbone": "swinv2"}],
}
VARIANTS["lavish"] += [{"backbone": "swinv2"}, {"backbone": "swinv2", "train_norms": True, "bn": False}]
# A 2-stage Swin-V2 on the tests' input (16² frames, 16 x 12 audio windows): a plain and a shifted-window block,
# patch merging, and both window masks; {"backbone": "swinv2"} in a variant builds the method on it.
SWIN = dict(name="test_swin", family="swinv2", embed_dim=16, depth=3, num_heads=2, stage_depths=(2, 1),
            window_size=2, patch_size=4, tubelet=1, audio_patch=(4, 4))  # fmt: skip
CASES = [(name, {}) for name in METHODS.names()] + [
    (name, v) for name, vs in VARIANTS.items() if name in METHODS for v in vs
]
IDS = [name + "".join(f"-{k}={v}" for k, v in o.items()) for name, o in CASES]
# Presence pattern (audio, video): both, audio only, video only, neither.
AUDIO_PRESENT = [True, True, False, False]
VIDEO_PRESENT = [True, False, True, False]


def build(name: str, overrides: dict, backbone, spec, seed: int = 0):
    overrides = dict(overrides)
    if overrides.pop("backbone", None) == "swinv2":
        backbone = BackboneConfig(**SWIN, drop_path=backbone.drop_path)
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    return cls(cls.Config(name=name, **overrides), backbone, spec)


def outputs(out: dict) -> dict[str, torch.Tensor]:
    """The output tensors, flattened to one dict."""
    flat = {"embedding": out["embedding"]}
    flat.update({f"per_modality.{m}": x for m, x in out.get("per_modality", {}).items()})
    return flat


def weighted_sum(out: dict) -> torch.Tensor:
    # Fixed random weights: a plain sum of LayerNorm outputs has zero gradient w.r.t. its input.
    g = torch.Generator().manual_seed(1)
    return sum((x * torch.randn(x.shape, generator=g)).sum() for x in outputs(out).values())


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_shapes_and_finite(name, overrides, backbone, spec, make_batch):
    model = build(name, overrides, backbone, spec)
    out = model(make_batch(spec, [True] * 3, [True] * 3))
    assert out["embedding"].shape == (3, model.embed_dim)
    assert set(out.get("per_modality", {})) <= set(model.modalities)
    for key, x in outputs(out).items():
        assert x.shape == (3, model.embed_dim), key
        assert torch.isfinite(x).all(), key


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_gradients_reach_trainable_and_not_frozen(name, overrides, backbone, spec, make_batch):
    model = build(name, overrides, backbone.model_copy(update={"drop_path": 0.1}), spec)
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    params[trainable[0]].requires_grad_(False)
    # Zero-initialised gates (LAVISH-style adapters) silence their branch's gradients at init by design; the
    # contract is that gradients can reach every trainable parameter, so move all parameters off their init.
    # A generator of its own leaves the global one, which draws the stochastic-depth masks, where build() put it.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    weighted_sum(model(make_batch(spec, [True] * 2, [True] * 2))).backward()
    frozen_with_grad = [n for n, p in params.items() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad, f"frozen parameters got a gradient: {frozen_with_grad}"
    silent = [n for n, p in params.items() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not silent, f"no gradient reaches {silent}"


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_deterministic_under_seed(name, overrides, backbone, spec, make_batch):
    bb = backbone.model_copy(update={"drop_path": 0.2})
    batch = make_batch(spec, [True] * 2, [True] * 2)
    runs = []
    for _ in range(2):
        model = build(name, overrides, bb, spec, seed=3)
        torch.manual_seed(4)  # stochastic depth draws from the global generator in train mode
        runs.append(outputs(model(batch)))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_state_dict_round_trip_safetensors(name, overrides, backbone, spec, make_batch, tmp_path):
    batch = make_batch(spec, [True] * 2, [True] * 2)
    source = build(name, overrides, backbone, spec, seed=0).eval()
    target = build(name, overrides, backbone, spec, seed=1).eval()
    assert not torch.equal(source(batch)["embedding"], target(batch)["embedding"])
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    target.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    expected, got = outputs(source(batch)), outputs(target(batch))
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
@pytest.mark.parametrize("placeholder", ["random", "nan"])
def test_missing_modalities_are_masked(name, overrides, placeholder, backbone, spec, make_batch):
    model = build(name, overrides, backbone, spec).eval()
    batch = make_batch(spec, AUDIO_PRESENT, VIDEO_PRESENT)
    before = outputs(model(batch))
    for key, x in before.items():
        assert torch.isfinite(x).all(), key

    swapped = dict(batch, audio=batch["audio"].clone(), video=batch["video"].clone())
    for m in ("audio", "video"):
        absent = ~batch[f"{m}_present"]
        fill = torch.randn_like(swapped[m][absent]) * 100 if placeholder == "random" else float("nan")
        swapped[m][absent] = fill
    after = outputs(model(swapped))
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-6, msg=key)

    # The masks hide only absent data: changing a present clip's input changes its embedding.
    m = model.modalities[0]
    changed = dict(batch, **{m: batch[m] + torch.randn_like(batch[m])})
    assert not torch.allclose(outputs(model(changed))["embedding"][0], before["embedding"][0])


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_batch_without_presence_keys_means_present(name, overrides, backbone, spec, make_batch):
    model = build(name, overrides, backbone, spec).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    bare = {k: v for k, v in batch.items() if not k.endswith("_present")}
    torch.testing.assert_close(model(bare)["embedding"], model(batch)["embedding"], rtol=0, atol=0)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_trainable_count_is_requires_grad(name, overrides, backbone, spec):
    model = build(name, overrides, backbone, spec)
    total, trainable = count_params(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    frozen = [p for p in model.parameters() if p.requires_grad][:3]
    for p in frozen:
        p.requires_grad_(False)
    assert count_params(model) == (total, trainable - sum(p.numel() for p in frozen))


@pytest.mark.parametrize("name", [n for n in ("vanilla", "mbt") if n in METHODS])
def test_fusion_layer_range_is_checked(name, backbone):
    cfg = METHODS.get(name).Config(name=name, fusion_layer=13)
    assert cfg.check(backbone) == [
        (
            "method.fusion_layer",
            "13 is out of range: must be in [0, 3] (0 = early fusion, 3 = late fusion; the backbone has depth 3)",
        )
    ]
    for lf in (0, backbone.depth):
        assert METHODS.get(name).Config(name=name, fusion_layer=lf).check(backbone) == []
