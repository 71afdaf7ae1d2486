"""LAVISH / AVISH on a frozen Swin-V2 (``methods/parts/swin_lavish.py``): Swin equations, pairing, weights, errors.

The method contract (shapes, gradients, masks, determinism, round trip) runs on the Swin path through the
``{"backbone": "swinv2"}`` variants of ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer_v2 import SwinTransformerV2

from harness.api import CheckpointError, InputSpec
from harness.config import ConfigError, resolve_run
from harness.models.backbones import BackboneConfig
from harness.testing import SWIN_BACKBONE
from methods.avish import AVISH, AVISHConfig
from methods.lavish import LAVISH, LAVISHConfig
from methods.parts.swin_lavish import SwinLAVISH, make_swinv2

SWIN = SWIN_BACKBONE  # the contract's tiny Swin-V2
SPEC = InputSpec(frames=2, image_size=16, n_mels=16, n_frames=32, num_classes=5)  # 2 pairs: 16² + 16 x 16


def build(cls=LAVISH, config=LAVISHConfig, seed: int = 0, **overrides) -> SwinLAVISH:
    torch.manual_seed(seed)
    return cls.build(config(**overrides), BackboneConfig(**SWIN), SPEC)


def batch(b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(b, SPEC.frames, 3, SPEC.image_size, SPEC.image_size, generator=g),
        "audio": torch.randn(b, 1, SPEC.n_mels, SPEC.n_frames, generator=g),
    }


def test_a_swin_backbone_builds_the_swin_path_for_lavish_and_avish():
    lavish, avish = build(), build(AVISH, AVISHConfig)
    assert isinstance(lavish, SwinLAVISH) and isinstance(avish, SwinLAVISH)
    assert lavish.adapters["video_p1"][0].latent.shape == (1, 2, 16)  # m = 2 latent tokens at stage 0's width
    assert avish.adapters["video_p1"][0].latent is None
    assert lavish.adapters["audio_p2"][2].down.weight.shape == (2, 2, 16)  # stage 1: width 32, r 8, 2 groups
    assert lavish.embed_dim == 32


def test_the_trainable_count_is_four_adapters_per_block_at_the_stage_width():
    model = build()
    r, g, m = 8, 2, 2

    def adapter(d: int) -> int:  # latent tokens, gate_av, LN before, down/up (no bias), 2 BN, LN post, gate
        return m * d + 1 + 2 * d + 2 * (d * (d // r) // g) + 2 * (d // r) + 2 * d + 2 * d + 1

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4 * (2 * adapter(16) + 1 * adapter(32))
    assert not any(p.requires_grad for p in model.swin.parameters())


def test_with_closed_gates_it_is_the_frozen_swin_on_each_pair():
    """Zero-initialised gates: each modality's vector is timm's own forward_features, pooled, averaged over pairs."""
    model = build().eval()
    x = batch()
    out = model(x)
    images, _ = model.pairs(x, {m: torch.ones(3, dtype=torch.bool) for m in ("audio", "video")})
    for m in ("audio", "video"):
        pooled = model.swin.forward_features(images[m]).mean(dim=(1, 2))  # (P, C)
        torch.testing.assert_close(out["per_modality"][m], pooled.view(3, SPEC.frames, -1).mean(1))


def test_frame_t_is_paired_with_audio_window_t():
    model = build()
    x = batch(b=2)
    present = {m: torch.ones(2, dtype=torch.bool) for m in ("audio", "video")}
    images, clip = model.pairs(x, present)
    assert clip.tolist() == [0, 0, 1, 1]
    assert images["audio"].shape == (4, 3, 16, 16) and images["video"].shape == (4, 3, 16, 16)
    # clip 1, window 1, a channel, as the AVE code's (time x mel) image (dataloader.py's fbank, forward_swin)
    torch.testing.assert_close(images["audio"][3, 2], x["audio"][1, 0, :, 16:].T)
    images, _ = build(audio_orientation="mel_time").pairs(x, present)  # the flag: the (mel x time) image
    torch.testing.assert_close(images["audio"][3, 2], x["audio"][1, 0, :, 16:])
    torch.testing.assert_close(images["video"][1], x["video"][0, 1])


def test_open_gates_carry_audio_into_the_video_vector():
    model = build().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate") or name.endswith("gate_av"):
                p.fill_(1.0)
    x = batch()
    louder = dict(x, audio=x["audio"] * 3)
    assert not torch.allclose(model(x)["per_modality"]["video"], model(louder)["per_modality"]["video"])


def test_a_timm_swin_checkpoint_loads_into_the_backbone(tmp_path):
    model = build()
    n = len(SWIN["stage_depths"])
    source = SwinTransformerV2(img_size=16, patch_size=4, num_classes=7, embed_dim=16, depths=(2, 1),
                               num_heads=tuple(2 * 2**i for i in range(n)), window_size=2)  # fmt: skip
    report = model.load_backbone(source.state_dict())
    assert not report.missing and report.unexpected == ["head.fc.bias", "head.fc.weight"]
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.swin.state_dict()[key], value), key

    bigger = make_swinv2(BackboneConfig(**dict(SWIN, embed_dim=32)), SPEC)
    with pytest.raises(CheckpointError, match="shapes differ"):
        model.load_backbone(bigger.state_dict())


def test_backbone_checkpoint_in_a_run_loads_the_swin(tmp_path):
    from harness.run.trial import build_model

    source = make_swinv2(BackboneConfig(**SWIN), SPEC)
    path = tmp_path / "swin.safetensors"
    save_file(source.state_dict(), path)
    raw = {
        "name": "t",
        "dataset": {"name": "synthetic", "image_size": 16, "n_mels": 16, "frames": 2, "n_frames": 32},
        "backbone": {**{k: v for k, v in SWIN.items() if k != "name"}, "name": "swinv2_micro", "checkpoint": str(path)},
        "method": {"name": "lavish"},
    }
    spec = resolve_run(raw)
    method, _ = build_model(spec, SPEC)
    assert torch.equal(method.swin.layers[1].blocks[0].attn.qkv.weight, source.layers[1].blocks[0].attn.qkv.weight)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"method": {"name": "vanilla"}}, r"backbone\.family.*'vanilla' is built on vit"),
        ({"backbone": {"name": "swinv2_micro", "pretrained": "synthetic"}}, "pretrains a ViT"),
        ({"backbone": {"name": "swinv2_micro", "tubelet": 2}}, "tubelet must be 1"),
        ({"dataset": {"name": "synthetic", "n_frames": 60}}, r"input\.n_frames.*split into 4 windows"),
    ],
)
def test_swin_configs_that_cannot_run_fail_naming_the_key(overrides, match):
    raw = {"name": "t", "backbone": {"name": "swinv2_micro"}, "method": {"name": "lavish"}} | overrides
    with pytest.raises(ConfigError, match=match):
        resolve_run(raw)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_by_sdpa_equals_timms(shifted):
    """The SDPA forward (per-head temperature in q, position bias + shift mask as attn_mask) is timm's arithmetic."""
    from timm.models.swin_transformer_v2 import WindowAttention

    torch.manual_seed(0)
    ours = make_swinv2(BackboneConfig(**SWIN), SPEC).layers[0].blocks[int(shifted)]
    x = torch.randn(3, 4, 4, 16)
    mask = ours.get_attn_mask(x)
    assert (mask is not None) == shifted
    windows = torch.randn(3 * 4, 4, 16)  # (B·nW, N, C): 3 clips x 4 windows of 2 x 2 tokens
    with torch.no_grad():
        ours.attn.logit_scale.uniform_(0.5, 3.0)
        got = ours.attn(windows, mask=mask)
        ours.attn.__class__ = WindowAttention
        want = ours.attn(windows, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lavish_models_deepcopy_and_pickle_on_either_backbone():
    import copy
    import pickle

    vit_backbone = BackboneConfig(name="t", embed_dim=16, depth=2, num_heads=2, patch_size=8, audio_patch=(8, 8))
    vit = LAVISH(LAVISHConfig(), vit_backbone, SPEC)
    for model in (vit, build()):
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert type(twin) is type(model)
            for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
                assert torch.equal(a, b), k
