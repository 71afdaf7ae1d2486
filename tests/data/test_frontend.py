"""The audio front end: the wrapper is torchaudio's Kaldi fbank with the card's settings, for every preset."""

from __future__ import annotations

import math

import pytest
import torch
from torchaudio.compliance.kaldi import fbank

from harness.data.frontend import PRESETS, FrontEndConfig, kaldi_fbank, normalise
from harness.data.synthetic import log_mel


def _wave(seconds: float = 1.3, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    g = torch.Generator().manual_seed(0)
    return (
        0.3 * torch.sin(2 * math.pi * 440 * t)
        + 0.1 * torch.sin(2 * math.pi * 3000 * t)
        + 0.02 * torch.randn(t.shape, generator=g)
    )


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matches_torchaudio_kaldi_fbank(preset):
    fe = FrontEndConfig(frontend=preset)
    w = _wave()
    direct = fbank((w - w.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                   window_type=PRESETS[preset]["window"], num_mel_bins=PRESETS[preset]["n_mels"], dither=0.0,
                   frame_length=PRESETS[preset]["frame_length_ms"],
                   frame_shift=PRESETS[preset]["frame_shift_ms"])  # fmt: skip
    ours = kaldi_fbank(w, fe)  # (n_mels, target_frames)
    assert ours.shape == (fe.n_mels, fe.target_frames)
    n = min(direct.shape[0], fe.target_frames)
    assert torch.allclose(ours[:, :n], direct[:n].T, atol=1e-4)
    assert (ours[:, n:] == 0).all()  # zero-padded to target_frames


def test_presets_and_overrides():
    mbt = FrontEndConfig(frontend="mbt")
    assert (mbt.window, mbt.target_frames, mbt.norm_mean, mbt.norm_std, mbt.norm_scale) == ("hamming", 800, 1.102,
                                                                                             2.762, 1.0)  # fmt: skip
    swin = FrontEndConfig(frontend="lavish_swin", target_frames=96)
    assert (swin.n_mels, swin.frame_shift_ms, swin.target_frames) == (192, 5.2, 96)  # explicit key wins
    x = torch.full((2, 3), -4.2677393)
    assert torch.allclose(normalise(x, FrontEndConfig()), torch.zeros(2, 3))  # AST: (x - mean) / (2 std)
    assert normalise(torch.tensor([1.102 + 2.762]), mbt).item() == pytest.approx(1.0)  # MBT: (x - mean) / std


def test_same_as_the_synthetic_front_end():
    w = _wave(0.64)
    fe = FrontEndConfig(frontend="ast", n_mels=32, target_frames=64)
    assert torch.allclose(kaldi_fbank(w, fe), log_mel(w[None], 16000, 32, 64)[0, 0], atol=1e-4)


def test_shorter_than_one_window_gives_zeros_not_an_error():
    out = kaldi_fbank(torch.zeros(100), FrontEndConfig(n_mels=16, target_frames=8))
    assert out.shape == (16, 8) and torch.isfinite(out).all()
