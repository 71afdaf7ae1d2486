"""Audio front end of the real datasets: Kaldi-compatible log-mel fbank (torchaudio) and its normalisation.

Presets, selectable from a card with ``frontend:`` (scenic's MBT AudioSet config, GenjiB/LAVISH ``AVE/dataloader.py``,
YuanGongND/ast ``src/dataloader.py``); any key set explicitly overrides the preset's value:

| preset | window | length / shift | mel bins | frames | normalisation |
| --- | --- | --- | --- | --- | --- |
| ``ast`` | Hann | 25 / 10 ms | 128 | 1024 | (x + 4.2677393) / (2 x 4.5689974), AudioSet statistics |
| ``mbt`` | Hamming | 25 / 10 ms | 128 | 800 | (x - 1.102) / 2.762 (MBT's Lingvo statistics, no factor 2) |
| ``lavish_vit`` | Hann | 25 / 10 ms | 128 | 1024 | (x + 4.1426) / (2 x 3.2001), AVE statistics |
| ``lavish_swin`` | Hann | 25 / 5.2 ms | 192 | 192 | (x + 4.98480) / (2 x 3.70798), AVE statistics |

The waveform's mean is removed first (AST). Known difference: MBT computes its log-mel with Lingvo, not Kaldi; the
``mbt`` preset keeps Kaldi's fbank with MBT's window, sizes and statistics. LAVISH's per-second windows are not
reproduced: every preset makes one spectrogram of the clip's audio window.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS: dict[str, dict] = {
    "ast": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=1024,
                norm_mean=-4.2677393, norm_std=4.5689974, norm_scale=2.0),
    "mbt": dict(window="hamming", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=800,
                norm_mean=1.102, norm_std=2.762, norm_scale=1.0),
    "lavish_vit": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=1024,
                       norm_mean=-4.1426, norm_std=3.2001, norm_scale=2.0),
    "lavish_swin": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=5.2, n_mels=192, target_frames=192,
                        norm_mean=-4.98480, norm_std=3.70798, norm_scale=2.0),
}  # fmt: skip
FBANK_KEYS = ("sample_rate", "window", "frame_length_ms", "frame_shift_ms", "n_mels")


class FrontEndConfig(BaseModel):
    """Audio front-end keys (flat under ``dataset:``, so ``--set dataset.n_mels=64`` works)."""

    model_config = ConfigDict(extra="forbid")

    frontend: Literal["ast", "mbt", "lavish_vit", "lavish_swin"] = Field(
        "ast", description="preset of the keys below (ast, mbt, lavish_vit, lavish_swin); explicit keys win"
    )
    sample_rate: int = Field(16000, ge=8000, description="waveform rate in Hz (audio is decoded mono at this rate)")
    window: Literal["hanning", "hamming", "povey", "rectangular", "blackman"] = Field(
        "hanning", description="Kaldi window type ('hanning' is a Hann window)"
    )
    frame_length_ms: float = Field(25.0, gt=0, description="analysis window length in ms")
    frame_shift_ms: float = Field(10.0, gt=0, description="hop between spectrogram frames in ms")
    n_mels: int = Field(128, ge=8, description="mel bins (spectrogram height)")
    target_frames: int = Field(1024, ge=8, description="spectrogram frames after zero-pad/cut (its width)")
    norm_mean: float = Field(-4.2677393, description="dataset mean of the log-mel, subtracted")
    norm_std: float = Field(4.5689974, gt=0, description="dataset std of the log-mel")
    norm_scale: float = Field(2.0, gt=0, description="divide by norm_scale x norm_std (AST: 2, MBT: 1)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data):
        if isinstance(data, dict):
            preset = PRESETS.get(data.get("frontend", "ast"), {})
            data = {**preset, **data}
        return data


def fbank_settings(fe: FrontEndConfig) -> dict:
    """The keys that change the cached (unnormalised, whole-clip) fbank: part of the cache key."""
    return {k: getattr(fe, k) for k in FBANK_KEYS}


def fit_frames(logmel: torch.Tensor, frames: int) -> torch.Tensor:
    """(M, F) -> (M, frames): cut, or zero-padded at the end (AST's and LAVISH's padding of short clips)."""
    logmel = logmel[:, :frames]
    return torch.nn.functional.pad(logmel, (0, frames - logmel.shape[1]))


def kaldi_fbank(wave: torch.Tensor, fe: FrontEndConfig, fit: bool = True) -> torch.Tensor:
    """Log-mel fbank of one mono waveform, zero-padded or cut to ``target_frames`` (``fit=False``: every frame the
    waveform gives, what the prepared cache stores); not normalised.

    Args:
        wave: (samples,) float at ``fe.sample_rate``.

    Returns:
        (n_mels, target_frames) float32: frequency on the height axis, time on the width axis.
    """
    from torchaudio.compliance.kaldi import fbank

    wave = wave.float()
    min_len = int(fe.sample_rate * fe.frame_length_ms / 1000)
    if wave.numel() < min_len:  # shorter than one window: Kaldi returns no frame; pad to one
        wave = torch.nn.functional.pad(wave, (0, min_len - wave.numel()))
    f = fbank(
        (wave - wave.mean())[None],
        htk_compat=True,
        sample_frequency=fe.sample_rate,
        use_energy=False,
        window_type=fe.window,
        num_mel_bins=fe.n_mels,
        dither=0.0,
        frame_length=fe.frame_length_ms,
        frame_shift=fe.frame_shift_ms,
    )  # (frames, n_mels)
    if not fit:
        return f.T.contiguous()
    f = f[: fe.target_frames]
    return torch.nn.functional.pad(f, (0, 0, 0, fe.target_frames - f.shape[0])).T.contiguous()


def normalise(logmel: torch.Tensor, fe: FrontEndConfig) -> torch.Tensor:
    """``(x - norm_mean) / (norm_scale * norm_std)``: AST's (x - mean) / (2 std) or MBT's (x - mean) / std."""
    return (logmel.float() - fe.norm_mean) / (fe.norm_scale * fe.norm_std)
