"""The parameter-efficient baselines on LAVISH's frozen backbone: identity at init, frozen weights, analytic counts."""

from __future__ import annotations

import pytest
import torch

from harness.models.complexity import count_params, forward_flops
from harness.models.shared_vit import backbone_state, load_backbone_state
from methods.adapter import Adapter
from methods.frozen import Frozen
from methods.lavish import LAVISH
from methods.lora import LoRA
from methods.prompt import Prompt

FROZEN_BACKBONE = [Adapter, LoRA, Prompt, Frozen, LAVISH]


def build(cls, backbone, spec, seed: int = 0, **fields):
    torch.manual_seed(seed)
    return cls.build(cls.Config(**fields), backbone, spec)


def outputs(model, batch) -> dict[str, torch.Tensor]:
    out = model(batch)
    return {"embedding": out["embedding"], **{f"cls.{m}": x for m, x in out["per_modality"].items()}}


@pytest.mark.parametrize("cls", [Adapter, LoRA], ids=lambda c: c.__name__)
@pytest.mark.parametrize("audio_embed", ["image", "spectrogram"])
def test_zero_init_equals_the_frozen_backbone(cls, audio_embed, backbone, spec, make_batch):
    frozen = build(Frozen, backbone, spec, seed=0, train_norms=False, audio_embed=audio_embed).eval()
    model = build(cls, backbone, spec, seed=1, audio_embed=audio_embed).eval()
    load_backbone_state(model, backbone_state(frozen))
    batch = make_batch(spec, [True, True, False], [True, False, True])
    expected, got = outputs(frozen, batch), outputs(model, batch)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # ... and only at init: once the zero-initialised parts move, the output does
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    assert not torch.allclose(outputs(model, batch)["embedding"], expected["embedding"])


@pytest.mark.parametrize("cls", FROZEN_BACKBONE, ids=lambda c: c.__name__)
def test_training_steps_leave_the_backbone_unchanged(cls, backbone, spec, make_batch):
    model = build(cls, backbone.model_copy(update={"drop_path": 0.1}), spec)
    before = {k: v.clone() for k, v in backbone_state(model).items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.1)
    for seed in range(3):
        out = model(make_batch(spec, [True] * 4, [True, True, False, True], seed=seed))
        loss = sum((x * torch.randn_like(x)).sum() for x in out["per_modality"].values())
        opt.zero_grad()
        loss.backward()
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        assert not frozen, frozen
        opt.step()
    after = backbone_state(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if model.cfg.train_norms:  # the LayerNorms are meant to move (frozen's default), nothing else
        changed = [k for k in changed if not any(n in k for n in ("norm1.", "norm2.", "norm."))]
    assert not changed, f"frozen backbone weights moved: {changed}"


@pytest.mark.parametrize("cls", FROZEN_BACKBONE, ids=lambda c: c.__name__)
def test_train_norms_trains_exactly_the_backbone_layernorms(cls, backbone, spec):
    plain = build(cls, backbone, spec, train_norms=False)
    normed = build(cls, backbone, spec, train_norms=True)
    d, depth = backbone.embed_dim, backbone.depth
    assert count_params(normed)[1] - count_params(plain)[1] == (4 * depth + 2) * d  # 2 LNs per block + final


def test_trainable_counts_match_the_formulas(backbone, spec):
    d, depth, r, g = backbone.embed_dim, backbone.depth, 8, 2
    assert count_params(build(Frozen, backbone, spec, train_norms=False))[1] == 0
    assert count_params(build(Frozen, backbone, spec))[1] == (4 * depth + 2) * d  # default: LayerNorms train

    # adapter: per adapter LN_before 2D, down D*(D/r)/G, BN 2 D/r, up (D/r)*D/G, BN 2D, LN_post 2D, gate 1
    per_adapter = 2 * d + 2 * d * (d // r) // g + 2 * (d // r) + 2 * d + 2 * d + 1
    assert count_params(build(Adapter, backbone, spec, reduction=r, groups=g))[1] == 4 * depth * per_adapter
    bare = dict(reduction=r, groups=1, bn=False, ln_before=False, ln_post=False, gate_audio=False)
    video, audio = 2 * d * (d // r) + 1, 2 * d * (d // r)  # only the visual adapters keep their gate
    assert count_params(build(Adapter, backbone, spec, **bare))[1] == 2 * depth * (video + audio)

    # lora on qkv (D -> 3D) and proj (D -> D): r (D + 3D) + r (D + D) per block; fc1 (D -> 4D) adds r (D + 4D)
    for rank in (1, 4):
        assert count_params(build(LoRA, backbone, spec, rank=rank))[1] == depth * rank * 6 * d
    lora_all = build(LoRA, backbone, spec, rank=2, targets=["qkv", "proj", "fc1", "fc2"])
    assert count_params(lora_all)[1] == depth * 2 * (4 * d + 2 * d + 5 * d + 5 * d)

    # prompt: p tokens of width D per layer per modality
    assert count_params(build(Prompt, backbone, spec, prompt_tokens=3))[1] == 2 * depth * 3 * d


def test_lora_is_the_papers_low_rank_update(backbone, spec):
    model = build(LoRA, backbone, spec, rank=4, alpha=2.0)
    qkv = model.blocks[1].attn.qkv
    a, b = qkv.lora_A["default"].weight, qkv.lora_B["default"].weight  # (r, D), (3D, r)
    assert not b.any(), "B starts at zero"
    with torch.no_grad():
        b.normal_()
    x = torch.randn(2, 5, backbone.embed_dim)
    w = qkv.base_layer.weight + (2.0 / 4) * b @ a  # W0 + (alpha / r) B A
    torch.testing.assert_close(qkv(x), x @ w.T + qkv.base_layer.bias)
    assert not qkv.base_layer.weight.requires_grad and a.requires_grad and b.requires_grad


def test_prompts_are_per_layer_per_modality_and_discarded(backbone, spec, make_batch):
    model = build(Prompt, backbone, spec, prompt_tokens=2).eval()
    frozen = build(Frozen, backbone, spec, seed=1, train_norms=False).eval()
    load_backbone_state(frozen, backbone_state(model))
    batch = make_batch(spec, [True] * 2, [True] * 2)
    out, ref = model(batch), frozen(batch)
    assert out["embedding"].shape == ref["embedding"].shape
    assert not torch.allclose(out["embedding"], ref["embedding"])  # the prompts are attended
    # the audio prompts of the last layer change the audio CLS only
    with torch.no_grad():
        model.prompts["audio"][-1].add_(torch.randn_like(model.prompts["audio"][-1]))
    moved = model(batch)["per_modality"]
    assert torch.equal(moved["video"], out["per_modality"]["video"])
    assert not torch.allclose(moved["audio"], out["per_modality"]["audio"])


@pytest.mark.parametrize("cls", FROZEN_BACKBONE, ids=lambda c: c.__name__)
def test_one_backbone_state_fits_every_frozen_method(cls, backbone, spec):
    source = build(Frozen, backbone, spec, seed=0)
    state = backbone_state(source)
    target = build(cls, backbone, spec, seed=1)
    assert set(backbone_state(target)) == set(state)  # plain keys, also under peft's base_layer
    load_backbone_state(target, state)
    for key, value in backbone_state(target).items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_state(target, {k: v for k, v in state.items() if not k.startswith("norm.")})


@pytest.mark.parametrize("cls", FROZEN_BACKBONE, ids=lambda c: c.__name__)
def test_flops_are_counted(cls, backbone, spec):
    # FlopCounterMode hooks every module's inputs under no_grad (harness profile, model/gflops of every trial)
    base = forward_flops(build(Frozen, backbone, spec), None, spec)["gmacs"]
    assert forward_flops(build(cls, backbone, spec), None, spec)["gmacs"] >= base > 0
