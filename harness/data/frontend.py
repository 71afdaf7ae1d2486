"""Audio front end of the real datasets: Kaldi-compatible log-mel fbank (torchaudio) and its normalisation.

Presets, selectable from a card with ``frontend:`` (scenic's MBT AudioSet config, GenjiB/LAVISH ``AVE/dataloader.py``,
YuanGongND/ast ``src/dataloader.py``); any key set explicitly overrides the preset's value:

| preset | window | length / shift | mel bins | frames | windows | normalisation | padded frames |
| --- | --- | --- | --- | --- | --- | --- | --- |
| ``ast`` | Hann | 25 / 10 ms | 128 | 1024 | one | (x + 4.2677393) / (2 x 4.5689974), AudioSet | raw |
| ``mbt`` | Hamming | 25 / 10 ms | 128 | 800 | one | (x - 1.102) / 2.762 (MBT's Lingvo statistics) | raw |
| ``lavish_vit`` | Hann | 25 / 10 ms | 128 | 102 / window | 10 x 1 s | (x + 4.1426) / (2 x 3.2001), AVE | 0 |
| ``lavish_swin`` | Hann | 25 / 5.2 ms | 192 | 192 / window | 10 x 1 s | (x + 4.98480) / (2 x 3.70798), AVE | 0 |

The waveform's mean is removed first (AST). ``segment_windows: S`` is LAVISH's AVE front end (``_wav2fbank``): S
windows of ``segment_seconds`` starting at ``np.linspace(0, n - sr (segment_seconds + 0.1), S, dtype=int)`` samples
(a clip no longer than that gives its whole waveform to every window), each its own fbank cut or padded to
``target_frames``, concatenated along time: (n_mels, S x target_frames), window s in columns [s F, (s + 1) F). That
is what a per-segment task splits (``harness.api.segments``). ``pad``: LAVISH normalises and then zero-pads, so a
padded frame is 0 (``normalised``); AST pads the raw log-mel with zeros and then normalises, so a padded frame is
(0 - mean) / (scale std), 0.65 with the AVE statistics (``raw``). The prepared cache stores the log-mel unnormalised
(:func:`audio_features`): of the clip's whole audio, so that any window can be cut when a batch is made, or, with
``segment_windows``, the S windows side by side; padded frames are NaN there (:func:`fit_frames` pads a cut window
the same way) and :func:`normalise` fills them either way. Known difference: MBT computes its log-mel with
Lingvo, not Kaldi; the ``mbt`` preset keeps Kaldi's fbank with MBT's window, sizes and statistics, and its padding
was not checked (``raw``, as before).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS: dict[str, dict] = {
    "ast": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=1024,
                norm_mean=-4.2677393, norm_std=4.5689974, norm_scale=2.0, segment_windows=0, pad="raw"),
    "mbt": dict(window="hamming", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=800,
                norm_mean=1.102, norm_std=2.762, norm_scale=1.0, segment_windows=0, pad="raw"),
    "lavish_vit": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=10.0, n_mels=128, target_frames=102,
                       norm_mean=-4.1426, norm_std=3.2001, norm_scale=2.0, segment_windows=10, pad="normalised"),
    "lavish_swin": dict(window="hanning", frame_length_ms=25.0, frame_shift_ms=5.2, n_mels=192, target_frames=192,
                        norm_mean=-4.98480, norm_std=3.70798, norm_scale=2.0, segment_windows=10, pad="normalised"),
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
    segment_windows: int = Field(
        0,
        ge=0,
        description="0: one spectrogram of the view's audio; S: LAVISH's AVE front end, S windows of "
        "segment_seconds, each target_frames long, side by side (n_frames = S x target_frames)",
    )
    segment_seconds: float = Field(1.0, gt=0, description="length of one of the segment_windows (LAVISH: 1 s)")
    pad: Literal["normalised", "raw"] = Field(
        "raw",
        description="normalised: padded frames are 0 after normalising (LAVISH's AVE code); raw: the log-mel is "
        "zero-padded before normalising (AST)",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data):
        if isinstance(data, dict):
            preset = PRESETS.get(data.get("frontend", "ast"), {})
            data = {**preset, **data}
        return data


def fbank_settings(fe: FrontEndConfig) -> dict:
    """The keys that change the cached (unnormalised) log-mel: part of the cache key, and what decoding rebuilds its
    ``FrontEndConfig`` from. The whole clip's fbank depends on the fbank settings only; LAVISH's per-second windows
    also on their count, length and width (their padded frames are cached as NaN, which :func:`normalise` fills)."""
    keys = FBANK_KEYS + (("target_frames", "segment_windows", "segment_seconds") if fe.segment_windows else ())
    return {k: getattr(fe, k) for k in keys}


def spectrogram_frames(fe: FrontEndConfig) -> int:
    """Width of the spectrogram a clip yields: ``target_frames``, times ``segment_windows`` when those are set."""
    return fe.target_frames * max(1, fe.segment_windows)


def _frames(wave: torch.Tensor, fe: FrontEndConfig) -> torch.Tensor:
    """Kaldi fbank (frames, n_mels) of a waveform whose mean was already removed."""
    from torchaudio.compliance.kaldi import fbank

    min_len = int(fe.sample_rate * fe.frame_length_ms / 1000)
    if wave.numel() < min_len:  # shorter than one window: Kaldi returns no frame; pad to one
        wave = torch.nn.functional.pad(wave, (0, min_len - wave.numel()))
    return fbank(wave[None], htk_compat=True, sample_frequency=fe.sample_rate, use_energy=False,
                 window_type=fe.window, num_mel_bins=fe.n_mels, dither=0.0, frame_length=fe.frame_length_ms,
                 frame_shift=fe.frame_shift_ms)  # fmt: skip


def _cut_or_pad(f: torch.Tensor, n: int, fill: float) -> torch.Tensor:
    """(frames, n_mels) -> (n_mels, n): the first n frames, padded with ``fill``."""
    f = f[:n]
    return torch.nn.functional.pad(f, (0, 0, 0, n - f.shape[0]), value=fill).T.contiguous()


def fit_frames(logmel: torch.Tensor, frames: int, fill: float = float("nan")) -> torch.Tensor:
    """(M, F) -> (M, frames): cut, or padded at the end with ``fill`` (NaN: :func:`normalise` applies ``pad``)."""
    return _cut_or_pad(logmel.T, frames, fill)


def kaldi_fbank(wave: torch.Tensor, fe: FrontEndConfig, fill: float = 0.0, fit: bool = True) -> torch.Tensor:
    """Log-mel fbank of one mono waveform, padded with ``fill`` or cut to ``target_frames`` (``fit=False``: every
    frame the waveform gives); not normalised.

    Args:
        wave: (samples,) float at ``fe.sample_rate``.
        fe: the front-end settings.
        fill: the value of padded frames.
        fit: cut or pad to ``target_frames``.

    Returns:
        (n_mels, target_frames) float32 (or (n_mels, frames of the waveform)): frequency on the height axis, time on
        the width axis.
    """
    wave = wave.float()
    f = _frames(wave - wave.mean(), fe)
    return _cut_or_pad(f, fe.target_frames, fill) if fit else f.T.contiguous()


def window_starts(samples: int, fe: FrontEndConfig) -> list[int] | None:
    """First sample of each of the ``segment_windows`` (GenjiB/LAVISH ``AVE/dataloader.py``, ``_wav2fbank``), or
    None when the clip is too short to cut (every window is then the whole clip)."""
    import numpy as np

    margin = fe.sample_rate * (fe.segment_seconds + 0.1)
    if samples <= margin:
        return None
    return [int(a) for a in np.linspace(0, samples - margin, num=fe.segment_windows, dtype=int)]


def segment_fbank(wave: torch.Tensor, fe: FrontEndConfig, fill: float = 0.0) -> torch.Tensor:
    """LAVISH's per-second fbanks side by side: (n_mels, segment_windows x target_frames); not normalised.

    The waveform's mean is removed once over the whole clip, each window gets its own fbank, cut or padded (with
    ``fill``) to ``target_frames`` (the AVE code's 102 for ViT, 192 for Swin).
    """
    wave = wave.float()
    wave = wave - wave.mean()
    starts, n = window_starts(wave.numel(), fe), int(fe.sample_rate * fe.segment_seconds)
    windows = [wave] * fe.segment_windows if starts is None else [wave[a : a + n] for a in starts]
    return torch.cat([_cut_or_pad(_frames(w, fe), fe.target_frames, fill) for w in windows], dim=1)


def audio_features(wave: torch.Tensor, fe: FrontEndConfig) -> torch.Tensor:
    """What the cache stores for a clip's audio: the log-mel of the whole waveform (n_mels, frames), windows cut when
    a batch is made; with ``segment_windows``, LAVISH's (n_mels, :func:`spectrogram_frames`) windows, padded frames
    NaN."""
    if fe.segment_windows:
        return segment_fbank(wave, fe, fill=float("nan"))
    return kaldi_fbank(wave, fe, fit=False)


def normalise(logmel: torch.Tensor, fe: FrontEndConfig) -> torch.Tensor:
    """``(x - norm_mean) / (norm_scale * norm_std)``: AST's (x - mean) / (2 std) or MBT's (x - mean) / std.

    Padded frames (NaN in the cache) become 0 (``pad: normalised``, LAVISH: normalise, then zero-pad) or the
    normalised 0 (``pad: raw``, AST: zero-pad, then normalise).
    """
    x = logmel.float()
    padded = torch.isnan(x)
    x = (x.masked_fill(padded, 0.0) - fe.norm_mean) / (fe.norm_scale * fe.norm_std)
    return x.masked_fill(padded, 0.0) if fe.pad == "normalised" else x
