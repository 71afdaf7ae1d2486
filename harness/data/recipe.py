"""The training recipe of the real datasets: which frames, which crop, which audio window, which masks, per view.

Every key is flat under ``dataset:`` (the card sets the paper's values, a run or ``--set dataset.flip=false``
overrides them) and none selects the prepared cache: the cache holds every frame of a clip on the ``cache_fps``
grid at a short side of ``cache_short_side`` and the log-mel of its whole audio, and :func:`plan_view` cuts a view
out of it when a batch is made. So the window (``window_seconds``, ``audio_seconds``), the crops and the training
fraction can be swept over one ``harness prepare``.

Training (``draw`` given): a random temporal window per epoch (``temporal_jitter``: the window anywhere in the clip,
or with ``window_seconds: null`` a random frame within each of the T equal slots, TSN-style), the audio window
centred on the video's (``sync: true``, scenic MBT's ``sync_random_state``) or drawn on its own (``sync: false``),
scale jitter (dmvr's: the frame scaled by s ~ U(scale_jitter) before the crop, so the crop covers 1/s of the centre
crop's side), a random crop position, a horizontal flip, colour jitter (brightness, contrast, saturation by factors
in 1 ± ``colour_strength``, with probability ``colour_jitter``; grey with probability ``colour_drop``; applied on the
device, :meth:`harness.data.dataset.PreparedSplit.on_device`) and SpecAugment (``spec_freq_masks`` masks of at most
``spec_freq_width`` mel bins, ``spec_time_masks`` of at most ``spec_time_width`` frames, set to 0, the dataset mean,
after normalisation). Every draw comes from ``random.Random(hash(seed, clip id))`` where ``seed`` is the epoch's
shuffling seed (``(run seed, epoch)``), so a run is reproduced by its seed and data-parallel ranks draw what one
process would. Evaluation (no ``draw``) is deterministic: T = ``test_clips`` windows evenly spaced over the clip
(one: the centred one) x S = ``test_crops`` crops (1: centre; 3: start, centre and end of the long side, as scenic's
3-crop test), no flip, no colour, no masks.

Short clips (the file ends before ``clip_seconds``, or an EPIC segment runs past the video's end): windows stay
within the media there is; a window longer than that gets ``short_clips: pad`` frames of the pixel mean (0 after
normalisation) and silence, ``loop`` the clip played again from its start, and ``skip`` leaves the clip out of
every split. The manifest lists them (``short``) with the seconds they hold.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.data.frontend import spectrogram_frames


class RecipeConfig(BaseModel):
    """Sampling and augmentation keys (flat under ``dataset:``); all but the view counts act in training only."""

    model_config = ConfigDict(extra="forbid")

    temporal_jitter: bool = Field(
        True,
        description="train: a random window per epoch (or a random frame per slot when window_seconds is null); "
        "eval always takes the centred/evenly spaced ones",
    )
    sync: bool = Field(True, description="true: the audio window is centred on the video window; false: drawn "
                       "independently in training (scenic MBT sync_random_state)")  # fmt: skip
    random_crop: bool = Field(False, description="train: the crop at a random position (false: centred)")
    scale_jitter: tuple[float, float] | None = Field(None, description="train: frame scale s ~ U(lo, hi) before the "
                                                     "crop (MBT: [0.9, 1.33]); null = none")  # fmt: skip
    flip: bool = Field(False, description="train: horizontal flip with probability 0.5")
    colour_jitter: float = Field(0.0, ge=0, le=1, description="train: probability of brightness/contrast/saturation "
                                 "jitter (MBT: 0.8); 0 = off")  # fmt: skip
    colour_strength: float = Field(0.4, ge=0, lt=1, description="colour jitter factors drawn in 1 ± colour_strength")
    colour_drop: float = Field(0.0, ge=0, le=1, description="train: probability of a grey clip (MBT: 0.1)")
    spec_freq_masks: int = Field(0, ge=0, description="train: SpecAugment frequency masks per clip (MBT: 1)")
    spec_freq_width: int = Field(48, ge=0, description="widest frequency mask in mel bins (MBT: 48)")
    spec_time_masks: int = Field(0, ge=0, description="train: SpecAugment time masks per clip (AST AudioSet: 1)")
    spec_time_width: int = Field(48, ge=0, description="widest time mask in spectrogram frames (AST AudioSet: 192)")
    test_crops: Literal[1, 3] = Field(1, description="spatial views per test clip: 1 centre, 3 along the long side")
    short_clips: Literal["pad", "loop", "skip"] = Field(
        "pad", description="a window longer than the media: pad (mean frames, silence), loop, or skip the clip"
    )
    train_fraction: float = Field(1.0, gt=0, le=1, description="share of the train split used (a stable hash of the "
                                  "clip id, nested: a smaller fraction is a subset of a larger one)")  # fmt: skip
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per split (0: in the trial)")
    loader_prefetch: int = Field(2, ge=1, description="batches each loader worker prepares ahead")
    pin_memory: bool = Field(True, description="pin batches in page-locked memory when CUDA is available")


@dataclass
class View:
    """One sample's cut of a prepared clip (indices in the cache's terms).

    Attributes:
        frames: stored-frame index per output frame (T,); -1 = a padding frame.
        crop: (top, left, side) of the square crop in stored pixels.
        flip: mirror horizontally.
        colour: (brightness, contrast, saturation, grey) factors, or None (no colour change).
        audio: (first column, columns) of the log-mel window.
        freq_masks, time_masks: [(first, width)] of the SpecAugment masks, in the fitted spectrogram.
    """

    frames: list[int]
    crop: tuple[int, int, int]
    flip: bool = False
    colour: tuple[float, float, float, float] | None = None
    audio: tuple[int, int] = (0, 0)
    freq_masks: tuple[tuple[int, int], ...] = ()
    time_masks: tuple[tuple[int, int], ...] = ()


def draw_rng(seed: int, clip_id: str) -> random.Random:
    """The generator of one clip's training draws in one epoch (``seed``: the epoch's shuffling seed)."""
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}/{clip_id}".encode()).digest()[:8], "big"))


def in_fraction(clip_id: str, fraction: float) -> bool:
    """Whether a train clip is within ``train_fraction`` (a hash independent of the val holdout's)."""
    return (
        fraction >= 1 or int(hashlib.sha1(f"train_fraction/{clip_id}".encode()).hexdigest()[:8], 16) < fraction * 2**32
    )


def frame_times(p, seconds: float, rng: random.Random | None, t_view: int, n_t: int) -> tuple[list[float], float]:
    """Times (s from the clip's start) of the T frames of one view, and the centre of its video window."""
    t, clip = p.frames, p.clip_seconds
    w = p.window_seconds or clip
    room = max(0.0, seconds - w)  # how far the window can move within the media there is
    if rng is not None and p.temporal_jitter:
        start = rng.uniform(0, room)
        offsets = [rng.random() for _ in range(t)] if p.window_seconds is None else [0.5] * t
    else:
        start = room / 2 if n_t == 1 else t_view * room / (n_t - 1)
        offsets = [0.5] * t
    return [start + (i + u) * w / t for i, u in enumerate(offsets)], start + min(w, max(seconds, 1e-3)) / 2


def stored_frames(p, times: list[float], seconds: float, n_stored: int) -> list[int]:
    """The cache's frame played at each time; past the media: -1 (``pad``) or the clip again (``loop``)."""
    out = []
    for t in times:
        if t >= seconds and p.short_clips == "loop" and seconds > 0:
            t = math.fmod(t, seconds)
        out.append(-1 if t >= seconds else min(n_stored - 1, max(0, int(t * p.cache_fps))))
    return out


def crop_box(p, hw: tuple[int, int], rng: random.Random | None, s_view: int, n_s: int) -> tuple[tuple, bool]:
    """(top, left, side) of the square crop in a stored frame of size ``hw``, and whether to flip it."""
    h, w = hw
    stored = min(h, w)
    side = min(stored, round(p.image_size * stored / (p.resize or p.image_size)))  # the centre crop's side
    flip = False
    if rng is not None:
        if p.scale_jitter:
            side = min(stored, max(1, round(side / rng.uniform(*p.scale_jitter))))
        if p.random_crop:
            return (rng.randint(0, h - side), rng.randint(0, w - side), side), p.flip and rng.random() < 0.5
        flip = p.flip and rng.random() < 0.5
    frac = 0.5 if n_s == 1 else s_view / (n_s - 1)  # along the long side; centred across the short one
    top = round((h - side) * (frac if h > w else 0.5))
    left = round((w - side) * (frac if w >= h else 0.5))
    return (top, left, side), flip


def audio_window(p, centre: float, seconds: float, rng: random.Random | None) -> tuple[int, int]:
    """(first column, columns) of the audio window in the clip's whole log-mel."""
    hop = p.frame_shift_ms / 1000
    length = min(p.audio_seconds or p.clip_seconds, p.clip_seconds)
    if rng is not None and not p.sync:
        centre = rng.uniform(length / 2, max(length / 2, seconds - length / 2))
    lo = min(max(centre - length / 2, 0.0), max(0.0, p.clip_seconds - length))
    return round(lo / hop), max(1, round(length / hop))


def masks(rng: random.Random | None, count: int, width: int, size: int) -> tuple[tuple[int, int], ...]:
    """SpecAugment masks: ``count`` of width U{0..width} at a uniform position within ``size``."""
    if rng is None:
        return ()
    out = []
    for _ in range(count):
        w = rng.randint(0, min(width, size))
        out.append((rng.randint(0, size - w), w))
    return tuple(out)


def plan_view(p, seconds: float, n_stored: int, hw: tuple[int, int], rng: random.Random | None = None,
              t_view: int = 0, n_t: int = 1, s_view: int = 0, n_s: int = 1) -> View:  # fmt: skip
    """One view of a clip holding ``seconds`` of media and ``n_stored`` frames of size ``hw``.

    ``rng`` given: a training draw (:func:`draw_rng`); None: test view (``t_view`` of ``n_t``, ``s_view`` of ``n_s``).
    """
    times, centre = frame_times(p, seconds, rng, t_view, n_t)
    crop, flip = crop_box(p, hw, rng, s_view, n_s)
    colour = None
    if rng is not None and (p.colour_jitter or p.colour_drop):
        s = p.colour_strength
        jitter = rng.random() < p.colour_jitter
        factors = [rng.uniform(1 - s, 1 + s) for _ in range(3)]
        colour = (*(factors if jitter else (1.0, 1.0, 1.0)), float(rng.random() < p.colour_drop))
    return View(
        frames=stored_frames(p, times, seconds, n_stored),
        crop=crop,
        flip=flip,
        colour=colour,
        audio=audio_window(p, centre, seconds, rng),
        freq_masks=masks(rng, p.spec_freq_masks, p.spec_freq_width, p.n_mels),
        time_masks=masks(rng, p.spec_time_masks, p.spec_time_width, spectrogram_frames(p)),
    )


def colour_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation (torchvision's ColorJitter order), then grey, per clip.

    Args:
        x: (B, T, 3, H, W) in [0, 1].
        factors: (B, 4): brightness, contrast, saturation factors and grey (1 = grey); (1, 1, 1, 0) = unchanged.
    """
    f = factors.view(-1, 4, 1, 1, 1, 1)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 1, 3, 1, 1)

    def grey(y: torch.Tensor) -> torch.Tensor:
        return (y * weights).sum(2, keepdim=True)  # (B, T, 1, H, W)

    x = (x * f[:, 0]).clamp_(0, 1)
    mean = grey(x).mean(dim=(1, 2, 3, 4), keepdim=True)
    x = ((x - mean) * f[:, 1] + mean).clamp_(0, 1)
    g = grey(x)
    x = ((x - g) * f[:, 2] + g).clamp_(0, 1)
    return torch.where(f[:, 3] > 0.5, grey(x).expand_as(x), x)
