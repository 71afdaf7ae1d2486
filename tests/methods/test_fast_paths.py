"""The fast paths every registered method keeps (each variant too): no host sync inside ``forward``, no attention
mask when every key is present, 4-D attention calls that SDPA's fused kernels take, and the same outputs as the
masked path.

No host sync: on the meta device every data-dependent op (``.item()``, ``bool(t)``, ``nonzero``, boolean indexing,
``.cpu()``, ``tolist``) raises, as it would stall a GPU; a method's forward and backward run there with the present
flags on the host, as the engines hand them over. The same check with ``torch.cuda.set_sync_debug_mode`` is the
``gpu``-marked test at the end.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from harness.api import COMPLETE, mark_complete
from harness.models.backbones import BackboneConfig
from harness.testing.contract import TINY_BACKBONE, TINY_SPEC, build, case_id, cases, make_batch, outputs
from methods.parts.lavish_adapter import TokenBatchNorm

CASES = cases()
IDS = [case_id(n, o) for n, o in CASES]
PATTERNS = {"complete": ([True] * 3, [True] * 3), "partial": ([True, False, True], [True, True, False])}


def _on(batch: dict, device: str) -> dict:
    """The batch's tensors on ``device``; the present flags stay on the host (CPU), as the engines keep them."""
    return {k: v.to(device) if torch.is_tensor(v) and not k.endswith("_present") else v for k, v in batch.items()}


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_forward_and_backward_make_no_host_sync(name, overrides, pattern):
    with torch.device("meta"):
        model = build(name, overrides, BackboneConfig(**TINY_BACKBONE, drop_path=0.1), TINY_SPEC)
    batch = _on(make_batch(TINY_SPEC, *PATTERNS[pattern]), "meta")
    for training in (True, False):
        model.train(training)
        out = outputs(model(batch))  # raises on any read of a (meta) device tensor's value
        assert out["embedding"].device.type == "meta"
        if training:
            sum(x.sum() for x in out.values()).backward()


class _Attention(TorchDispatchMode):
    """Counts the attention calls that reach SDPA's fused CPU kernel (what a 3-D call or the math fallback skips)."""

    def __init__(self):
        super().__init__()
        self.fused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default:
            self.fused += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_complete_batches_attend_without_masks_in_fused_kernels(name, overrides, monkeypatch):
    model = build(name, overrides, BackboneConfig(**TINY_BACKBONE), TINY_SPEC).eval()
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.dim(), attn_mask is None))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad(), _Attention() as mode:
        model(make_batch(TINY_SPEC, [True] * 2, [True] * 2))
    assert calls, "no attention call"
    assert all(dim == 4 for dim, _ in calls), f"{name}: attention on 3-D tensors (SDPA's math kernel)"
    if overrides.get("backbone") != "swinv2":  # Swin's mask is its relative position bias, not a key mask
        assert all(unmasked for _, unmasked in calls), f"{name}: a mask although every key is present"
    assert mode.fused == len(calls), f"{name}: {len(calls) - mode.fused} of {len(calls)} calls not fused"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_unmasked_path_equals_masked(name, overrides, training):
    model = build(name, overrides, BackboneConfig(**TINY_BACKBONE), TINY_SPEC).train(training)
    batch = make_batch(TINY_SPEC, [True] * 3, [True] * 3)
    assert mark_complete(batch)[COMPLETE] == ("audio", "video")
    runs = []
    for known in (("audio", "video"), ()):  # () = nothing known complete: every mask built, BatchNorm rows masked
        torch.manual_seed(5)  # dropout draws alike
        runs.append(outputs(model({**batch, COMPLETE: known})))
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-5, atol=1e-5, msg=key)


def test_flags_on_a_device_are_not_read():
    batch = make_batch(TINY_SPEC, [True] * 2, [True] * 2)
    assert mark_complete(batch)[COMPLETE] == ("audio", "video")
    assert mark_complete(_on(batch, "meta") | {"audio_present": batch["audio_present"].to("meta")})[COMPLETE] == (
        "video",
    )
    assert mark_complete({k: v for k, v in batch.items() if not k.endswith("_present")})[COMPLETE] == (
        "audio",
        "video",
    )


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("rows", [[True, False, True, False], [True] * 4, [False] * 4], ids=["some", "all", "none"])
def test_token_batch_norm_masked_statistics_equal_batch_norm_over_the_rows(rows, momentum):
    torch.manual_seed(0)
    ours, ref = TokenBatchNorm(6, momentum=momentum), torch.nn.BatchNorm1d(6, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    rows = torch.tensor(rows)
    for step in range(2):  # twice: the running statistics' update compounds
        x = torch.randn(4, 5, 6, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        out = ours(x, rows)
        expected = torch.zeros_like(x)
        if rows.any():
            expected[rows] = ref(x_ref[rows].flatten(0, 1)).view(-1, 5, 6)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(out)
        out.backward(g)
        if rows.any():
            expected.backward(g)
            torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
        else:
            assert not x.grad.any()
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, msg=f"{key} after step {step}")


@pytest.mark.gpu
@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_no_sync_on_cuda(name, overrides):
    """What the meta check stands in for, on a GPU: a training forward + backward with CUDA's sync detector on."""
    model = build(name, overrides, BackboneConfig(**TINY_BACKBONE, drop_path=0.1), TINY_SPEC).cuda().train()
    for pattern in PATTERNS.values():
        batch = _on(make_batch(TINY_SPEC, *pattern), "cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = outputs(model(mark_complete(batch)))
            sum(x.float().sum() for x in out.values()).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
