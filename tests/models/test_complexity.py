"""FLOP and parameter counts against analytic formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig, make_blocks, num_audio_tokens, num_video_tokens
from harness.models.complexity import count_flops, count_params, forward_flops, register_sdpa_formulas
from methods.late import Late
from methods.mbt import MBT
from methods.vanilla import Vanilla

BACKBONE = BackboneConfig(name="test", embed_dim=16, depth=3, num_heads=2, patch_size=8, tubelet=2, audio_patch=(8, 8))
SPEC = InputSpec(frames=4, image_size=16, n_mels=16, n_frames=48, num_classes=5)


def block_macs(n: int, d: int, mlp_ratio: float = 4.0) -> int:
    """One pre-LN ViT block over n tokens of width d: qkv, scores, attention x V, proj, fc1, fc2."""
    hidden = int(d * mlp_ratio)
    return n * d * 3 * d + n * n * d + n * n * d + n * d * d + n * d * hidden + n * hidden * d


def block_params(d: int, mlp_ratio: float = 4.0) -> int:
    hidden = int(d * mlp_ratio)
    linears = (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    return linears + 2 * 2 * d  # + two LayerNorms


def stream_sizes(bb: BackboneConfig, spec: InputSpec) -> dict[str, tuple[int, int]]:
    """modality -> (patch tokens, MACs per patch token of its embedding conv)."""
    return {
        "video": (num_video_tokens(bb, spec), 3 * bb.tubelet * bb.patch_size**2 * bb.embed_dim),
        "audio": (num_audio_tokens(bb, spec), bb.audio_patch[0] * bb.audio_patch[1] * bb.embed_dim),
    }


@pytest.mark.parametrize("masked", [False, True])
def test_block_flops_match_analytic(masked):
    b, n, d = 2, 10, 32
    block = make_blocks(BACKBONE.model_copy(update={"embed_dim": d, "num_heads": 4}), 1)[0].eval()
    x = torch.randn(b, n, d)
    mask = None
    if masked:
        mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
        mask[1, ..., 4:] = False
    register_sdpa_formulas()  # what count_flops does first: attention on CPU is counted by FlopCounterMode itself
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(x, attn_mask=mask)
    assert counter.get_total_flops() == 2 * b * block_macs(n, d)
    assert count_flops(block, x, attn_mask=mask) == {
        "gflops": 2 * b * block_macs(n, d) / 1e9,
        "gmacs": b * block_macs(n, d) / 1e9,
    }


def test_block_backward_counts_attention():
    # Linear layers cost 2x forward in backward; torch's attention-backward formula counts five n x n x d matmuls
    # (the scores are recomputed, as fused kernels do), against two in forward.
    n, d = 10, 32
    block = make_blocks(BACKBONE.model_copy(update={"embed_dim": d, "num_heads": 4}), 1)[0]
    x = torch.randn(1, n, d, requires_grad=True)
    attention = 2 * n * n * d
    expected = 3 * (block_macs(n, d) - attention) + attention + 5 * n * n * d
    assert count_flops(lambda: block(x).sum().backward())["gmacs"] == pytest.approx(expected / 1e9)


def test_late_params_match_analytic():
    d, depth = BACKBONE.embed_dim, BACKBONE.depth
    per_stream = {m: n * d + d + k + d + depth * block_params(d) for m, (n, k) in stream_sizes(BACKBONE, SPEC).items()}
    # n*d pos table, d CLS, k conv weights (k = MACs per token), d conv bias, blocks; one final LayerNorm.
    expected = sum(per_stream.values()) + 2 * d
    assert count_params(Late(Late.Config(), BACKBONE, SPEC)) == (expected, expected)
    mbt = MBT(MBT.Config(bottleneck_tokens=4), BACKBONE, SPEC)
    assert count_params(mbt)[0] == expected + 4 * d
    shared = Vanilla(Vanilla.Config(), BACKBONE, SPEC)
    assert count_params(shared)[0] == expected - depth * block_params(d)


@pytest.mark.parametrize("fusion_layer", [0, 1, 3])
def test_mbt_forward_flops_match_analytic(fusion_layer):
    nb, depth, d = 4, BACKBONE.depth, BACKBONE.embed_dim
    model = MBT(MBT.Config(fusion_layer=fusion_layer, bottleneck_tokens=nb), BACKBONE, SPEC)
    expected = 0
    for n, k in stream_sizes(BACKBONE, SPEC).values():
        expected += n * k  # patch embedding
        expected += fusion_layer * block_macs(n + 1, d) + (depth - fusion_layer) * block_macs(n + 1 + nb, d)
    assert forward_flops(model, None, SPEC)["gmacs"] == pytest.approx(expected / 1e9)
    assert model.training  # the mode is restored


def test_vanilla_forward_flops_with_head():
    model = Vanilla(Vanilla.Config(fusion_layer=1), BACKBONE, SPEC)
    head = nn.Linear(BACKBONE.embed_dim, SPEC.num_classes)
    sizes = stream_sizes(BACKBONE, SPEC)
    d = BACKBONE.embed_dim
    expected = sum(n * k + block_macs(n + 1, d) for n, k in sizes.values())
    expected += 2 * block_macs(sum(n + 1 for n, _ in sizes.values()), d) + d * SPEC.num_classes
    flops = forward_flops(model, head, SPEC)
    assert flops["gmacs"] == pytest.approx(expected / 1e9)
    assert flops["gflops"] == pytest.approx(2 * flops["gmacs"])


# -- meta-device counts (model_cost) ----------------------------------------------------------------------------------

from harness.registry import TASKS  # noqa: E402
from harness.run.trial import model_cost  # noqa: E402
from harness.testing.contract import TINY_BACKBONE, TINY_SPEC, build, case_id, cases, make_batch  # noqa: E402

CASES = cases()


def _task(method: nn.Module) -> nn.Module:
    cls = TASKS.get("classification")
    return cls(cls.Config(), TINY_SPEC.num_classes, method.embed_dim)


@pytest.mark.parametrize("name,overrides", CASES, ids=[case_id(n, o) for n, o in CASES])
def test_model_cost_on_meta_equals_a_forward_on_real_tensors(name, overrides):
    method = build(name, overrides, BackboneConfig(**TINY_BACKBONE), TINY_SPEC)
    task = _task(method)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    real = forward_flops(method, task, TINY_SPEC)  # what model_cost counted before: a forward on CPU tensors
    cost = model_cost(method, task, TINY_SPEC, batch_size=2)
    assert cost["model/gflops"] == real["gflops"] > 0 and cost["model/gmacs"] == real["gmacs"]
    assert cost["model/gflops"] < cost["model/train_gflops"] < 3.01 * cost["model/gflops"]
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())  # the copy, not the model, ran
    assert all(p.device.type == "cpu" and p.grad is None for p in method.parameters())


@pytest.mark.parametrize("name", ["mbt", "lavish", "lowrank", "prompt"])
def test_training_flops_on_meta_equal_a_counted_training_step(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from harness.models.complexity import train_flops

    torch.manual_seed(0)
    method = build(name, {}, BackboneConfig(**TINY_BACKBONE), TINY_SPEC).train()
    task = _task(method).train()
    batch = make_batch(TINY_SPEC, [True] * 3, [True] * 3)
    register_sdpa_formulas()
    # The math kernel: its backward is the model's 4 matmuls per attention; a fused kernel's formula adds its
    # recomputation of the scores, which is not the model's work (MFU counts model FLOPs, as the meta device does).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        task.loss(method(batch), batch).backward()
    assert train_flops(method, task, TINY_SPEC, batch_size=3)["gflops"] == pytest.approx(
        counter.get_total_flops() / 3 / 1e9, rel=1e-9
    )
