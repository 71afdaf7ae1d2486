"""The patch embeddings' matmul forward equals their Conv3d / Conv2d (outputs, gradients, FLOPs), remainders included.

``VideoPatchEmbed`` / ``AudioPatchEmbed`` keep an ``nn.Conv3d`` / ``nn.Conv2d`` as ``proj`` (checkpoints map onto
``proj.weight`` / ``proj.bias``) but compute it as unfold + ``F.linear``; here the module's own ``proj`` called as a
convolution is the reference.
"""

from __future__ import annotations

import pytest
import torch

from harness.models.backbones import AudioPatchEmbed, BackboneConfig, VideoPatchEmbed
from harness.models.complexity import count_flops


def backbone(**kw) -> BackboneConfig:
    cfg = dict(name="t", embed_dim=24, depth=1, num_heads=4, patch_size=8, tubelet=1, audio_patch=(8, 4))
    return BackboneConfig(**{**cfg, **kw})


def video_reference(embed: VideoPatchEmbed, video: torch.Tensor) -> torch.Tensor:
    return embed.proj(video.transpose(1, 2)).flatten(2).transpose(1, 2)  # (B, Nv, D), time-major


def audio_reference(embed: AudioPatchEmbed, audio: torch.Tensor) -> torch.Tensor:
    return embed.proj(audio).flatten(2).transpose(1, 2)  # (B, Na, D), frequency-major


def check_same(embed, reference, x: torch.Tensor) -> None:
    """Forward and every gradient (weight, bias, input) of ``embed(x)`` match ``reference(embed, x)``."""
    grads = []
    for fn in (embed, lambda t: reference(embed, t)):
        inp = x.clone().requires_grad_(True)
        out = fn(inp)
        # A fixed random cotangent, so every output element's gradient matters.
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        grads.append((out.detach(), embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone(), inp.grad))
        embed.zero_grad(set_to_none=True)
    for got, want, what in zip(grads[0], grads[1], ("output", "weight grad", "bias grad", "input grad")):
        assert got.shape == want.shape, what
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize(
    "tubelet,patch,frames,size",
    [(1, 8, 4, 16), (2, 8, 4, 16), (2, 8, 5, 19), (3, 4, 7, 13), (1, 16, 1, 16)],
    ids=["frames", "tubelets", "remainder", "odd-remainder", "one-token"],
)
def test_video_matches_conv3d(tubelet: int, patch: int, frames: int, size: int) -> None:
    torch.manual_seed(0)
    embed = VideoPatchEmbed(backbone(tubelet=tubelet, patch_size=patch))
    check_same(embed, video_reference, torch.randn(3, frames, 3, size, size))


@pytest.mark.parametrize(
    "patch,freq,frames", [((8, 4), 16, 12), ((8, 4), 19, 14), ((16, 16), 16, 16), ((3, 5), 10, 23)]
)
def test_audio_matches_conv2d(patch: tuple[int, int], freq: int, frames: int) -> None:
    torch.manual_seed(0)
    embed = AudioPatchEmbed(backbone(audio_patch=patch))
    check_same(embed, audio_reference, torch.randn(3, 1, freq, frames))


def test_same_parameters_and_flops() -> None:
    """Checkpoints still map onto ``proj.*``, and FlopCounterMode counts the matmul as the convolution."""
    cfg = backbone(tubelet=2)
    video, audio = VideoPatchEmbed(cfg), AudioPatchEmbed(cfg)
    assert {k: tuple(v.shape) for k, v in video.state_dict().items()} == {"proj.weight": (24, 3, 2, 8, 8),
                                                                          "proj.bias": (24,)}  # fmt: skip
    assert {k: tuple(v.shape) for k, v in audio.state_dict().items()} == {"proj.weight": (24, 1, 8, 4),
                                                                          "proj.bias": (24,)}  # fmt: skip
    v, a = torch.randn(2, 5, 3, 19, 19), torch.randn(2, 1, 19, 14)
    with torch.no_grad():
        assert count_flops(video, v) == count_flops(video_reference, video, v)
        assert count_flops(audio, a) == count_flops(audio_reference, audio, a)
        assert count_flops(video, v)["gflops"] > 0


def test_meta_device_shapes() -> None:
    """``harness profile`` builds models on the meta device: the reshape path must work there."""
    with torch.device("meta"):
        embed = VideoPatchEmbed(backbone(tubelet=2))
        out = embed(torch.empty(2, 5, 3, 19, 19))
    assert out.shape == (2, 2 * 2 * 2, 24) and out.device.type == "meta"


def test_lavish_image_mode_audio_patches_equal_the_conv2d():
    """LAVISH's spectrogram-as-image patch embedding (harness/models/shared_vit.py) is the conv2d it replaces."""
    import torch.nn.functional as F

    from harness.models.shared_vit import image_patches

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 35, 50, generator=g, requires_grad=True).expand(-1, 3, -1, -1)  # remainders on both axes
    kernel = torch.randn(8, 3, 4, 4, generator=g, requires_grad=True)
    bias = torch.randn(8, generator=g, requires_grad=True)
    ref = F.conv2d(x, kernel, bias, stride=4).flatten(2).transpose(1, 2)  # (B, f·t, D), frequency-major
    ours = image_patches(x, kernel, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(ref.shape, generator=g)
    grads_ref = torch.autograd.grad((ref * w).sum(), (kernel, bias))
    grads = torch.autograd.grad((ours * w).sum(), (kernel, bias))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
