"""Backbone weights from local files (``harness/models/weights.py``) and their mapping onto the methods, against timm.

A tiny timm ``VisionTransformer`` with random weights is the checkpoint. Where the mapping is a true identity (one
frame, tubelet 1, the checkpoint's patch size and grid), a stream's CLS output must equal timm's on the same image.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from harness.api import CheckpointError, InputSpec
from harness.config import ConfigError, RunSpec
from harness.models.backbones import BackboneConfig, VideoPatchEmbed
from harness.models.weights import arp_weights, audio_pos, image_vit, read_checkpoint, resize_grid, video_kernel
from harness.registry import METHODS
from harness.run.trial import build_model

DIM, DEPTH, HEADS, PATCH, IMG = 32, 2, 2, 8, 32  # a 4 x 4 grid


def timm_vit(dim: int = DIM, depth: int = DEPTH, seed: int = 0) -> VisionTransformer:
    """A tiny timm ViT whose every tensor (biases, norms, CLS, positions too) is random, so equality means something."""
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=dim, depth=depth, num_heads=HEADS, num_classes=7)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit.eval()


def backbone(**kw) -> BackboneConfig:
    cfg = dict(name="t", embed_dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, tubelet=1, audio_patch=(8, 8))
    return BackboneConfig(**{**cfg, **kw})


def spec(**kw) -> InputSpec:
    return InputSpec(**{**dict(frames=1, image_size=IMG, n_mels=32, n_frames=32, num_classes=5), **kw})


def build(name: str, bb: BackboneConfig | None = None, sp: InputSpec | None = None, **fields):
    cls = METHODS.get(name)
    torch.manual_seed(1)
    return cls.build(cls.Config(name=name, **fields), bb or backbone(), sp or spec()).eval()


def timm_cls(vit: VisionTransformer, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vit.forward_features(image)[:, 0]  # (B, D) CLS after the final norm


@pytest.fixture(scope="module")
def vit():
    return timm_vit()


def test_safetensors_and_torch_files_read_the_same(vit, tmp_path):
    sd = vit.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "w.pth")  # timm train checkpoint wrapper
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.pth", "w.bin"):
        got = read_checkpoint(tmp_path / name)
        assert got.keys() == sd.keys(), name
        assert all(torch.equal(got[k], sd[k]) for k in sd), name
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown suffix '.ckpt'"):
        read_checkpoint(tmp_path / "w.ckpt")


def to_jax_npz(vit: VisionTransformer, path) -> None:
    """The original ViT .npz layout (what timm's ``_load_weights`` reads), written from a timm ViT."""
    d, h = vit.embed_dim, HEADS
    w = {
        "embedding/kernel": vit.patch_embed.proj.weight.permute(2, 3, 1, 0),  # (p, p, C, D)
        "embedding/bias": vit.patch_embed.proj.bias,
        "cls": vit.cls_token,
        "Transformer/posembed_input/pos_embedding": vit.pos_embed,
        "Transformer/encoder_norm/scale": vit.norm.weight,
        "Transformer/encoder_norm/bias": vit.norm.bias,
    }
    for i, blk in enumerate(vit.blocks):
        b = f"Transformer/encoderblock_{i}/"
        mha = b + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            w[f"{mha}{n}/kernel"] = blk.attn.qkv.weight[j * d : (j + 1) * d].T.reshape(d, h, d // h)
            w[f"{mha}{n}/bias"] = blk.attn.qkv.bias[j * d : (j + 1) * d].reshape(h, d // h)
        w[f"{mha}out/kernel"] = blk.attn.proj.weight.reshape(d, h, d // h).permute(1, 2, 0)
        w[f"{mha}out/bias"] = blk.attn.proj.bias
        for ln, norm in (("LayerNorm_0", blk.norm1), ("LayerNorm_2", blk.norm2)):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = norm.weight, norm.bias
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            w[f"{b}MlpBlock_3/Dense_{r}/kernel"], w[f"{b}MlpBlock_3/Dense_{r}/bias"] = fc.weight.T, fc.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in w.items()})


def test_npz_reads_through_timm_into_the_same_state_dict(vit, tmp_path):
    to_jax_npz(vit, tmp_path / "vit.npz")
    rng = torch.get_rng_state()
    got = read_checkpoint(tmp_path / "vit.npz")
    assert torch.equal(rng, torch.get_rng_state())  # building timm's carrier model left the RNG alone
    want = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize(
    "name, fields, stacks",
    [
        ("vanilla", {"fusion_layer": 1}, ["streams.blocks.shared"]),
        ("mbt", {"fusion_layer": 1}, ["streams.blocks.audio", "streams.blocks.video"]),
        ("mbt", {"fusion_layer": 1, "shared_weights": True}, ["streams.blocks.shared"]),
        ("cross", {"fusion_layer": 1}, ["streams.blocks.audio", "streams.blocks.video"]),
        ("late", {}, ["streams.blocks.audio", "streams.blocks.video"]),
        ("lavish", {}, ["blocks"]),
        ("avish", {}, ["blocks"]),
    ],
)
def test_blocks_equal_timm_exactly_and_the_report_says_what_kept_its_init(vit, name, fields, stacks):
    model = build(name, **fields)
    report = model.load_backbone(vit.state_dict())
    ours = model.state_dict()
    for stack in stacks:
        for i, blk in enumerate(vit.blocks):
            for k, v in blk.state_dict().items():
                assert torch.equal(ours[f"{stack}.{i}.{k}"], v), f"{stack}.{i}.{k}"
    assert torch.equal(ours["norm.weight"], vit.norm.weight)
    assert report.unexpected == ["head.bias", "head.weight"]
    assert all(not any(n.startswith(s) for s in stacks) for n in report.missing)  # every block tensor loaded
    if name == "mbt":
        assert report.missing == ["bottleneck"]  # bottleneck_init=normal keeps its init
    if name in ("lavish", "avish"):
        assert report.missing and all(n.startswith("adapters.") for n in report.missing)


@pytest.mark.parametrize("name", ["video_only", "late", "mbt"])
def test_one_frame_video_stream_equals_timm_on_the_image(vit, name):
    """Tubelet 1, the checkpoint's patch and grid: tokens, positions, CLS, blocks and norm are all timm's."""
    model = build(name, **({"fusion_layer": DEPTH} if name == "mbt" else {}))  # mbt with Lf = L: no exchange
    model.load_backbone(vit.state_dict())
    torch.manual_seed(2)
    image = torch.randn(3, 3, IMG, IMG)
    batch = {"video": image[:, None], "audio": torch.randn(3, 1, 32, 32)}
    with torch.no_grad():
        out = model(batch)
    ours = out["per_modality"]["video"] if "per_modality" in out else out["embedding"]
    torch.testing.assert_close(ours, timm_cls(vit, image), rtol=1e-5, atol=1e-5)


def test_audio_stream_equals_timm_on_the_transposed_three_channel_spectrogram(vit):
    """scenic's spectrogram is (time, freq) in 3 channels: our summed, transposed kernel on (freq, time) is that."""
    model = build("audio_only")
    model.load_backbone(vit.state_dict())
    torch.manual_seed(3)
    spec_ft = torch.randn(2, 1, 32, 32)  # (B, 1, freq, time)
    with torch.no_grad():
        ours = model({"audio": spec_ft})["embedding"]
    torch.testing.assert_close(ours, timm_cls(vit, spec_ft.transpose(2, 3).expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("orientation", ["time_mel", "mel_time"])
def test_lavish_with_closed_gates_is_timm_on_image_and_on_spectrogram_image(vit, orientation):
    """LAVISH's zero-initialised gates leave the loaded frozen ViT: video = timm(image), audio = timm(3 x spec).

    The official behaviour written out (GenjiB/LAVISH ``AVE/dataloader.py`` keeps Kaldi's (frames, mel) fbank;
    ``net_trans.py`` repeats it to 3 channels and runs timm's ViT on that image): with ``time_mel`` (the default) our
    (B, 1, mel, time) spectrogram must give timm's output on its transpose; ``mel_time`` (the flag) on it as it is.
    The spectrogram is square and has the image's token count, so no positional interpolation is involved.
    """
    model = build("lavish", audio_orientation=orientation)
    model.load_backbone(vit.state_dict())
    torch.manual_seed(4)
    image, spec_ft = torch.randn(2, 3, IMG, IMG), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = model({"video": image[:, None], "audio": spec_ft})["per_modality"]
    torch.testing.assert_close(out["video"], timm_cls(vit, image), rtol=1e-5, atol=1e-5)
    official = spec_ft.transpose(2, 3) if orientation == "time_mel" else spec_ft  # (B, 1, frames, mel) = the AVE fbank
    torch.testing.assert_close(out["audio"], timm_cls(vit, official.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    other = spec_ft if orientation == "time_mel" else spec_ft.transpose(2, 3)
    assert not torch.allclose(out["audio"], timm_cls(vit, other.expand(-1, 3, -1, -1)), atol=1e-3)


@pytest.mark.parametrize("mode", ["central", "average"])
def test_static_clip_tubelet_embedding_equals_the_image_embedding(vit, mode):
    bb = backbone(tubelet=2, tubelet_init=mode)
    embed = VideoPatchEmbed(bb)
    state = image_vit(vit.state_dict())
    with torch.no_grad():
        embed.proj.weight.copy_(video_kernel(state, "proj.weight", embed.proj.weight.shape, mode))
        embed.proj.bias.copy_(state.patch_bias)
        image = torch.randn(2, 3, IMG, IMG)
        ours = embed(image[:, None].expand(-1, 2, -1, -1, -1))  # (B, 16, D): one tubelet of two equal frames
        want = vit.patch_embed(image)  # (B, 16, D)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    if mode == "central":
        assert embed.proj.weight[:, :, 0].abs().sum() == 0 and torch.equal(
            embed.proj.weight[:, :, 1], vit.patch_embed.proj.weight
        )


def test_arp_weights_follow_bilen_eq3():
    # T = 2: H = (0, 1, 1.5); alpha_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1}) = (-0.5, 0.5); scenic divides by T.
    torch.testing.assert_close(arp_weights(2), torch.tensor([-0.25, 0.25]))
    assert abs(float(arp_weights(5).sum())) < 1e-6  # rank pooling ignores what does not change over time


def test_resized_positions_are_scipy_zoom_order_1_as_in_scenic(vit):
    grid = image_vit(vit.state_dict()).grid  # (4, 4, D)
    got = resize_grid(grid, (7, 3))
    want = scipy.ndimage.zoom(grid.detach().numpy(), (7 / 4, 3 / 4, 1), order=1)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # audio: resized to scenic's (time, freq) = (6, 2), then in our frequency-major order
    a = audio_pos(image_vit(vit.state_dict()), (2, 6)).reshape(2, 6, -1)
    torch.testing.assert_close(a, resize_grid(grid, (6, 2)).transpose(0, 1))


def test_video_positions_are_resized_per_frame_and_tiled_over_time(vit):
    model = build("video_only", backbone(tubelet=2), spec(frames=6, image_size=48))  # grid (3, 6, 6)
    model.load_backbone(vit.state_dict())
    pos = model.tokens.pos["video"].detach().reshape(3, 36, DIM)
    frame = resize_grid(image_vit(vit.state_dict()).grid, (6, 6)).reshape(36, DIM)
    for t in range(3):
        torch.testing.assert_close(pos[t], frame)


def test_mbt_bottlenecks_from_the_resized_grid(vit, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    bb = backbone(checkpoint=str(path))
    model = build("mbt", bb, fusion_layer=0, bottleneck_tokens=6, bottleneck_init="pos")
    report = model.load_backbone(read_checkpoint(path))
    want = scipy.ndimage.zoom(image_vit(vit.state_dict()).grid.detach().numpy(), (2 / 4, 3 / 4, 1), order=1)
    np.testing.assert_allclose(model.bottleneck.detach().numpy()[0], want.reshape(6, DIM), rtol=1e-5, atol=1e-6)
    assert "bottleneck" not in report.missing
    errors = dict(METHODS.get("mbt").Config(name="mbt", bottleneck_tokens=5, bottleneck_init="pos").check(backbone()))
    assert "5 does not" in errors["method.bottleneck_init"] and "needs backbone.checkpoint" in str(
        METHODS.get("mbt").Config(name="mbt", bottleneck_init="pos").check(backbone())
    )


def test_width_depth_and_patch_mismatches_name_the_keys_and_shapes():
    wide = timm_vit(dim=48).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"patch_embed.proj.weight \(48, 3, 8, 8\) cannot fill tokens.patch.\w+.proj.weight \(32, .*embed_dim=32",
    ):
        build("late").load_backbone(wide)
    with pytest.raises(CheckpointError, match=r"checkpoint has 3 blocks, streams.blocks.audio has 2"):
        build("late").load_backbone(timm_vit(depth=3).state_dict())
    mlp = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2)
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp.fc1.weight has shape \(64, 32\) but .*\(128, 32\)"):
        build("late").load_backbone(mlp.state_dict())
    with pytest.raises(CheckpointError, match="audio_patch"):
        build("late", backbone(audio_patch=(8, 4))).load_backbone(timm_vit().state_dict())
    ls = VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, init_values=1e-5
    )
    with pytest.raises(CheckpointError, match=r"blocks.0.ls1.gamma has no counterpart"):
        build("late").load_backbone(ls.state_dict())


def test_lavish_refuses_a_tubelet_init_its_audio_path_cannot_read(vit):
    model = build("lavish", backbone(tubelet=2, tubelet_init="average"), spec(frames=2))
    with pytest.raises(CheckpointError, match="tubelet_init=central"):
        model.load_backbone(vit.state_dict())


def test_a_missing_file_is_a_config_error(tiny_run, tmp_path):
    run = {**tiny_run, "backbone": {**tiny_run["backbone"], "checkpoint": str(tmp_path / "nope.safetensors")}}
    with pytest.raises(ConfigError, match="backbone.checkpoint"):
        RunSpec.from_dict(run)


def test_build_model_loads_the_checkpoint_before_the_cost_is_counted(vit, tiny_run, tmp_path, capsys):
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    bb = dict(name="tiny", embed_dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, audio_patch=[8, 8])
    run = {**tiny_run, "backbone": {**bb, "checkpoint": str(path)}, "method": {"name": "late"}}
    method, _ = build_model(RunSpec.from_dict(run), spec())
    assert torch.equal(method.streams.blocks["video"][1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    assert "loaded" in capsys.readouterr().err
