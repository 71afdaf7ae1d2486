"""The audio front end: the wrapper is torchaudio's Kaldi fbank with the card's settings, for every preset."""

from __future__ import annotations

import math

import pytest
import torch
from torchaudio.compliance.kaldi import fbank

from harness.data.frontend import (
    PRESETS,
    FrontEndConfig,
    audio_features,
    fit_frames,
    kaldi_fbank,
    normalise,
    spectrogram_frames,
)
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


def lavish_reference(wave: torch.Tensor, idx: int, fe: FrontEndConfig) -> torch.Tensor:
    """GenjiB/LAVISH ``AVE/dataloader.py`` ``_wav2fbank(filename, idx=idx)`` written out (no mixup): window ``idx``
    of the clip's 10 one-second windows as the model receives it, (target_length, mel) normalised, then padded."""
    import numpy as np

    waveform = wave[None].float()
    waveform = waveform - waveform.mean()
    if waveform.shape[1] > 16000 * (1 + 0.1):
        sample_indx = np.linspace(0, waveform.shape[1] - 16000 * (1 + 0.1), num=10, dtype=int)
        waveform = waveform[:, sample_indx[idx] : sample_indx[idx] + int(16000 * 1)]
    f = fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
              num_mel_bins=fe.n_mels, dither=0.0, frame_shift=fe.frame_shift_ms)  # fmt: skip
    f = (f - fe.norm_mean) / (fe.norm_std * 2)
    target_length = int(1024 * (1 / 10)) if fe.n_mels == 128 else 192  # ViT: 102; Swin: 192
    p = target_length - f.shape[0]
    if p > 0:
        f = torch.nn.ZeroPad2d((0, 0, 0, p))(f)
    elif p < 0:
        f = f[0:target_length, :]
    return f


@pytest.mark.parametrize("preset", ["lavish_vit", "lavish_swin"])
@pytest.mark.parametrize("seconds", [10.0, 3.7, 0.9])  # an AVE clip, a short one, one shorter than 1.1 s (not cut)
def test_lavish_windows_equal_the_ave_dataloader(preset, seconds):
    """Ten 1-s windows at the AVE code's starts, each normalised and then zero-padded: padded frames are exactly 0."""
    fe = FrontEndConfig(frontend=preset)
    w = _wave(seconds)
    ours = normalise(audio_features(w, fe), fe)  # (n_mels, 10 x target_frames), as the cache + batch reader give it
    per = fe.target_frames
    assert ours.shape == (fe.n_mels, 10 * per) and spectrogram_frames(fe) == 10 * per
    for s in range(10):
        torch.testing.assert_close(ours[:, s * per : (s + 1) * per].T, lavish_reference(w, s, fe), atol=2e-5, rtol=0)
    frames = fbank(w[None, :16000], frame_shift=fe.frame_shift_ms, num_mel_bins=fe.n_mels).shape[0]
    if seconds > 1.1:
        assert frames < per and (ours[:, frames:per] == 0).all()  # 98 of 102 (ViT), 188 of 192 (Swin) frames


def test_raw_padding_is_the_old_pad_then_normalise():
    """``pad: raw`` (AST, the harness before): the zero-padded log-mel is normalised, 0.647 with the AVE statistics."""
    fe = FrontEndConfig(frontend="lavish_vit", pad="raw")
    ours = normalise(audio_features(_wave(10.0), fe), fe)
    assert torch.allclose(ours[:, 100], torch.tensor(4.1426 / (2 * 3.2001)))  # a padded frame of window 0
    old = normalise(kaldi_fbank(_wave(2.0), FrontEndConfig(frontend="ast")), FrontEndConfig(frontend="ast"))
    ast = FrontEndConfig(frontend="ast")  # the cache keeps the whole clip's log-mel; a batch cuts and pads its window
    new = normalise(fit_frames(audio_features(_wave(2.0), ast), ast.target_frames), ast)
    torch.testing.assert_close(new, old)  # the ast preset keeps AST's order
