"""The embedded default dataset: procedural audio-visual clips in which fusion matters.

Each clip shows ``1 + distractors`` objects moving (and bouncing) over ``frames`` video frames. Each object has a
colour (``colours`` of them) and a shape (``shapes`` of them), both distinct within a clip, and "flashes" (is
drawn at full brightness) in a random set of event slots; outside its flashes it is drawn at ``idle_brightness``
(default 0: not drawn at all, so each frame shows only the objects flashing in it). The soundtrack holds tone bursts
exactly in the slots where the *sounding* object flashes; the distractors flash only in other slots. As with real
sources, what the sound is like depends on what sounds: the sounding object's shape sets the pitch (one pitch per
shape), and an audio-only attribute, the timbre (``timbres`` harmonic recipes), varies freely. The label is
``colour_of_sounding_object * timbres + timbre``.

Why this caps what each kind of model can reach (``K = 1 + distractors`` objects):
- video only sees K colours but not which object sounds, nor the timbre: at best ``1 / (K * timbres)``;
- audio only hears pitch (so the shape) and timbre, but colour is independent of shape: at best ``1 / colours``;
- late (score-level) fusion adds the two score vectors: the sum peaks on K candidates, so at best ``1 / K``;
- token-level fusion can bind the sound to its object, by its shape (pitch) or by synchrony: up to 100 %.
With the defaults (K = 2, 6 colours, 3 timbres): 16.7 %, 16.7 %, 50 %, 100 %. The sounding object's event times
have the same distribution as each distractor's, so no single-modality statistic tells it apart (exactly so for
one distractor; with two, the distractors may flash together while the sounding object never shares a slot).
The default has 2 slots of 2 frames: each object flashes in exactly one slot, the sounding object in the one that
sounds, so binding needs one bit of timing; one token per frame (patch = image size) and per 160 ms of audio
lets attention (and MBT's bottlenecks) find the binding within a CPU budget, which finer grids did not.

Audio goes through the real front end: a 16 kHz waveform -> Kaldi-compatible log-mel fbank (torchaudio) ->
AST-style normalisation with the train split's statistics. Generation is vectorised over clips and frames,
deterministic per ``seed``, and cached on disk by a hash of the parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.api import Dataset, InputSpec
from harness.data.base import TensorSplit

SPLITS = ("train", "val", "test")
COLOURS = torch.tensor([[1, 0.1, 0.1], [0.1, 1, 0.1], [0.2, 0.3, 1], [1, 1, 0.1], [0.1, 1, 1], [1, 0.2, 1]])
PITCHES_HZ = (250.0, 600.0, 1400.0)  # one per shape
TIMBRES = ((1.0,), (1.0, 2.0), (1.0, 3.0))  # partials (multiples of the pitch) of each timbre


class SyntheticConfig(BaseModel):
    """Parameters of the synthetic dataset (keys under ``dataset:`` in a run file)."""

    model_config = ConfigDict(extra="forbid")

    clips_train: int = Field(2400, ge=8, description="clips in the train split")
    clips_val: int = Field(400, ge=8, description="clips in the validation split")
    clips_test: int = Field(600, ge=8, description="clips in the test split")
    frames: int = Field(4, ge=2, description="video frames per clip (T)")
    slots: int = Field(2, ge=2, description="event slots per clip; each spans frames / slots frames and audio")
    image_size: int = Field(32, ge=16, description="frame height and width in pixels")
    colours: int = Field(6, ge=2, le=6, description="object colours; classes = colours x timbres")
    shapes: int = Field(3, ge=2, le=3, description="object shapes; each sounds at its own pitch")
    timbres: int = Field(3, ge=1, le=3, description="harmonic recipes of the sound (audio-only label attribute)")
    distractors: int = Field(1, ge=0, le=2, description="silent objects per clip besides the sounding one (< shapes)")
    audio_seconds: float = Field(0.64, gt=0, description="length of the soundtrack in seconds")
    sample_rate: int = Field(16000, ge=8000, description="waveform sample rate in Hz")
    n_mels: int = Field(32, ge=8, description="mel bins of the log-mel spectrogram")
    n_frames: int = Field(64, ge=8, description="spectrogram frames after pad/cut (10 ms hop)")
    noise: float = Field(0.1, ge=0, le=1, description="std of the pixel noise and relative level of audio noise")
    object_size: int = Field(0, ge=0, description="object radius in pixels; 0 = image_size // 6")
    max_speed: float = Field(1.5, ge=0, description="largest object speed in pixels per frame")
    idle_brightness: float = Field(
        0.0, ge=0, le=1, description="brightness of an object outside its flashes (0 = visible only when flashing)"
    )
    seed: int = Field(0, description="generation seed (fixed across training seeds, so every trial sees one dataset)")
    clips_per_sample: int = Field(
        1,
        ge=1,
        description="K: each sample is read as K consecutive short clips (frames / K frames and n_frames / K "
        "spectrogram columns each), one token per clip for a backbone.family: cnn front end (AVBERT); the clips "
        "themselves are unchanged (set slots = K for one event slot per short clip)",
    )
    train_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="keep this fraction of the train split (a fixed subset, drawn with dataset.seed), for transfer "
        "with a small label budget; val and test are whole, and the clips are the same as with 1.0",
    )


def _event_sets(n: int, cfg: SyntheticConfig, g: torch.Generator) -> torch.Tensor:
    """Flash masks (n, K, slots): object 0 sounds; distractors flash only in frames where it does not.

    Every object's number of events is uniform in [1, T // 2] and its frames uniform among those allowed,
    so the sounding object's flash pattern has the same distribution as each distractor's.
    """
    t, k = cfg.slots, 1 + cfg.distractors
    most = max(1, t // 2)
    perm = torch.rand(n, t, generator=g).argsort(dim=1)  # (n, T) random frame order
    n_sound = torch.randint(1, most + 1, (n, 1), generator=g)
    rank = torch.empty_like(perm).scatter_(1, perm, torch.arange(t).expand(n, t))  # rank of each frame
    events = torch.zeros(n, k, t, dtype=torch.bool)
    events[:, 0] = rank < n_sound
    for j in range(1, k):
        # random order of the free frames (sounded frames pushed last), take the first n_j of them
        key = torch.rand(n, t, generator=g) + events[:, 0].float() * 2
        rank_j = torch.empty_like(perm).scatter_(1, key.argsort(dim=1), torch.arange(t).expand(n, t))
        free = t - n_sound
        n_j = torch.minimum(torch.randint(1, most + 1, (n, 1), generator=g), free.clamp(min=1))
        events[:, j] = (rank_j < n_j) & ~events[:, 0]
    return events


def _trajectories(n: int, cfg: SyntheticConfig, radius: int, g: torch.Generator) -> torch.Tensor:
    """Centres (n, K, T, 2) of objects moving at constant speed and bouncing off the frame borders."""
    k, t, lo, hi = 1 + cfg.distractors, cfg.frames, radius, cfg.image_size - 1 - radius
    start = lo + torch.rand(n, k, 1, 2, generator=g) * (hi - lo)
    speed = (torch.rand(n, k, 1, 2, generator=g) * 2 - 1) * cfg.max_speed
    pos = start + speed * torch.arange(t).view(1, 1, t, 1) - lo  # unfolded path, origin at lo
    span = hi - lo
    pos = torch.remainder(pos, 2 * span)
    return lo + torch.where(pos > span, 2 * span - pos, pos)  # reflect: bounce


def _object_masks(shape_ids, centres, radius: int, cfg) -> torch.Tensor:
    """(n, K, T, H, W) bool: the pixels each object covers in each frame (before occlusion)."""
    n, k, t = centres.shape[:3]
    s = cfg.image_size
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    dy = yy.view(1, 1, 1, s, s) - centres[..., 1, None, None]  # (n, K, T, H, W)
    dx = xx.view(1, 1, 1, s, s) - centres[..., 0, None, None]
    inside = torch.stack(
        [
            torch.maximum(dx.abs(), dy.abs()) <= radius * 0.85,  # square
            dx**2 + dy**2 <= radius**2,  # disc
            dx.abs() + dy.abs() <= radius * 1.2,  # diamond
        ]
    )  # (3, n, K, T, H, W)
    return inside.gather(0, shape_ids.view(1, n, k, 1, 1, 1).expand(1, n, k, t, s, s))[0]


def sounding_mask(drawn: torch.Tensor, sounding: torch.Tensor) -> torch.Tensor:
    """(n, T, H, W) bool: the visible pixels of the sounding object, from ``drawn`` (n, K, T, H, W) in drawing order
    (later objects occlude earlier ones) and ``sounding`` (n,) its index in that order."""
    k = drawn.shape[1]
    own = drawn[torch.arange(drawn.shape[0]), sounding]  # (n, T, H, W)
    later = torch.arange(k)[None] > sounding[:, None]  # (n, K): drawn over it
    return own & ~(drawn & later[..., None, None, None]).any(1)


def _draw_video(colour_ids, shape_ids, events, centres, radius: int, cfg, g) -> torch.Tensor:
    """Render uint8 frames (n, T, 3, H, W): dim objects, bright when flashing, on a noisy dark background."""
    n, k, t = events.shape
    s = cfg.image_size
    mask = _object_masks(shape_ids, centres, radius, cfg)  # (n, K, T, H, W)
    colour = COLOURS[colour_ids]  # (n, K, 3)
    bright = torch.where(events, 1.0, cfg.idle_brightness)  # (n, K, T)
    img = 0.08 + cfg.noise * torch.randn(n, t, 3, s, s, generator=g)
    for j in range(k):  # later objects occlude earlier ones; an unlit object (brightness 0) is not drawn
        paint = (colour[:, j, None, :] * bright[:, j, :, None])[..., None, None]  # (n, T, 3, 1, 1)
        drawn = mask[:, j] & (bright[:, j] > 0)[..., None, None]  # (n, T, H, W)
        img = torch.where(drawn[:, :, None], paint, img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _synth_audio(shape, timbre, sounding, cfg: SyntheticConfig, g) -> torch.Tensor:
    """Waveforms (n, samples): bursts of the shape's pitch and the timbre's partials in the sounding slots."""
    n, t = sounding.shape
    samples = int(round(cfg.audio_seconds * cfg.sample_rate))
    f0 = torch.tensor(PITCHES_HZ)[shape]  # (n,)
    time = torch.arange(samples) / cfg.sample_rate
    slot = (torch.arange(samples) * t // samples).clamp(max=t - 1)  # event slot of each sample
    within = (time * t / cfg.audio_seconds) % 1.0
    envelope = torch.sin(math.pi * within).clamp(min=0) ** 0.5  # smooth burst inside its slot
    gate = sounding[:, slot].float() * envelope  # (n, samples)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    tone = torch.zeros(n, samples)
    for j, partials in enumerate(TIMBRES[: cfg.timbres]):
        wave = sum(torch.sin(2 * math.pi * p * f0[:, None] * time + p * phase) / p for p in partials)
        tone = torch.where((timbre == j)[:, None], wave, tone)
    return 0.5 * gate * tone + 0.5 * cfg.noise * torch.randn(n, samples, generator=g)


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int, n_frames: int) -> torch.Tensor:
    """Kaldi-compatible log-mel fbank (AST settings: Hann window, 25 ms, 10 ms hop), padded/cut to n_frames.

    Returns (n, 1, n_mels, n_frames): frequency on the height axis, time on the width axis.
    """
    from torchaudio.compliance.kaldi import fbank

    out = torch.empty(wave.shape[0], 1, n_mels, n_frames)
    for i, w in enumerate(wave):
        f = fbank(
            (w - w.mean())[None],
            htk_compat=True,
            sample_frequency=sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=n_mels,
            dither=0.0,
            frame_shift=10,
        )  # (frames, n_mels)
        f = f[:n_frames]
        out[i, 0] = torch.nn.functional.pad(f, (0, 0, 0, n_frames - f.shape[0])).T
    return out


def generate(cfg: SyntheticConfig, latents: bool = False, masks: bool = False, waves: bool = False,
             positions: bool = False) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    """Generate all splits: {split: {"video": uint8 (N,T,3,H,W), "audio": float (N,1,M,F), "label": (N,)}}.

    Args:
        cfg: the parameters.
        latents: also return each split's generative attributes (:func:`latent_attributes`), for unimodal
            pretraining (``harness/run/pretrain.py``). They are derived from draws made anyway, so the clips, labels
            and the cache key do not depend on this flag.
        masks: also return ``mask`` uint8 (N, T, H, W): the visible pixels of the sounding object in every frame
            (none while it is not drawn), the ``synthetic_avs`` format's label; computed without random draws, so
            the clips do not depend on this flag either.
        waves: also return ``wave`` float (N, samples), the soundtrack before the log-mel (``harness synth``).
        positions: also return ``colours`` (N, K) and ``mean_x`` (N, K), each object's colour and mean x over the
            clip, object 0 the sounding one (``synthetic_avqa``'s questions).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    radius = cfg.object_size or max(2, cfg.image_size // 6)
    out = {}
    for split in SPLITS:
        n = getattr(cfg, f"clips_{split}")
        k = 1 + cfg.distractors
        # colours and shapes: distinct within a clip; object 0 sounds
        colour = torch.rand(n, cfg.colours, generator=g).argsort(dim=1)[:, :k]  # (n, K)
        shape = torch.rand(n, cfg.shapes, generator=g).argsort(dim=1)[:, :k]  # (n, K)
        timbre = torch.randint(0, cfg.timbres, (n,), generator=g)
        events = _event_sets(n, cfg, g)  # (n, K, slots)
        centres = _trajectories(n, cfg, radius, g)  # (n, K, T, 2)
        frame_events = events.repeat_interleave(cfg.frames // cfg.slots, dim=2)  # (n, K, T)
        order = torch.rand(n, k, generator=g).argsort(dim=1)  # random drawing (occlusion) order
        take = order[..., None]
        drawn_events = frame_events.gather(1, take.expand(-1, -1, cfg.frames))
        drawn_centres = centres.gather(1, take[..., None].expand(-1, -1, cfg.frames, 2))
        drawn_shapes = shape.gather(1, order)
        video = _draw_video(colour.gather(1, order), drawn_shapes, drawn_events, drawn_centres, radius, cfg, g)
        wave = _synth_audio(shape[:, 0], timbre, events[:, 0], cfg, g)
        audio = log_mel(wave, cfg.sample_rate, cfg.n_mels, cfg.n_frames)
        out[split] = {"video": video, "audio": audio, "label": colour[:, 0] * cfg.timbres + timbre}
        if latents:
            out[split].update(latent_attributes(cfg, colour, shape, timbre, events, frame_events))
        if waves:
            out[split]["wave"] = wave
        if positions:
            out[split].update(colours=colour.clone(), mean_x=centres[..., 0].mean(-1))
        if masks:
            lit = drawn_events | (cfg.idle_brightness > 0)  # (n, K, T): drawn in frame t
            drawn = _object_masks(drawn_shapes, drawn_centres, radius, cfg) & lit[..., None, None]
            out[split]["mask"] = sounding_mask(drawn, order.argsort(dim=1)[:, 0]).to(torch.uint8)
    # AST-style normalisation, (x - mean) / (2 std), with the train split's statistics
    mean, std = out["train"]["audio"].mean(), out["train"]["audio"].std()
    for split in SPLITS:
        out[split]["audio"] = ((out[split]["audio"] - mean) / (2 * std)).to(torch.float16)
    return out


def latent_attributes(cfg: SyntheticConfig, colour, shape, timbre, events, frame_events) -> dict[str, torch.Tensor]:
    """What a unimodal observer could name in each clip, as multi-hot / index targets.

    Returns:
        ``frame_colours`` (n, T, colours) and ``frame_shapes`` (n, T, shapes) bool: drawn in frame t (an object is
        drawn while it flashes, or always when ``idle_brightness`` > 0); ``sounding`` (n, slots) bool: the slots
        with a tone burst; ``pitch`` (n,) the sounding object's shape (one pitch per shape); ``timbre`` (n,).
    """
    drawn = frame_events | (cfg.idle_brightness > 0)  # (n, K, T)
    n, k, t = drawn.shape
    frame_colours = torch.zeros(n, t, cfg.colours, dtype=torch.bool)
    frame_shapes = torch.zeros(n, t, cfg.shapes, dtype=torch.bool)
    for j in range(k):
        frame_colours |= torch.nn.functional.one_hot(colour[:, j], cfg.colours).bool()[:, None] & drawn[:, j, :, None]
        frame_shapes |= torch.nn.functional.one_hot(shape[:, j], cfg.shapes).bool()[:, None] & drawn[:, j, :, None]
    return {
        "frame_colours": frame_colours,
        "frame_shapes": frame_shapes,
        "sounding": events[:, 0].clone(),
        "pitch": shape[:, 0].clone(),
        "timbre": timbre.clone(),
    }


def config_hash(cfg: SyntheticConfig) -> str:
    """Hash of the parameters and of the generator's version: the cache key."""
    # how the clips are read (K short clips, a train subset) does not change what is generated
    blob = json.dumps({"v": 2, **cfg.model_dump(exclude={"clips_per_sample", "train_fraction"})}, sort_keys=True)
    blob = blob.encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_generate(cfg: SyntheticConfig, cache_dir: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """Load the cached splits for ``cfg``, generating and caching them (atomically) on first use."""
    from safetensors.torch import load_file

    from harness.data.storage import save_atomic

    path = Path(cache_dir) / "synthetic" / f"{config_hash(cfg)}.safetensors"
    if not path.exists():
        data = generate(cfg)
        # Concurrent generators race harmlessly: same content, atomic rename.
        save_atomic({f"{s}/{k}": v.contiguous() for s, d in data.items() for k, v in d.items()}, path)
    flat = load_file(str(path))
    return {s: {k: flat[f"{s}/{k}"] for k in ("video", "audio", "label")} for s in SPLITS}


def input_spec(cfg: SyntheticConfig) -> InputSpec:
    return InputSpec(cfg.frames, cfg.image_size, cfg.n_mels, cfg.n_frames, cfg.colours * cfg.timbres,
                     clips=cfg.clips_per_sample)  # fmt: skip


def train_subset(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the ``round(n * fraction)`` (at least 1) train clips kept, a fixed draw of ``seed``, sorted."""
    keep = max(1, round(n * fraction))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:keep].sort().values


class SyntheticDataset(Dataset):
    """The ``synthetic`` format: generated on first use, cached by parameter hash, held in memory.

    Args:
        params: the dataset's parameters.
        cache_dir: root of the harness cache (the clips go under ``<cache_dir>/synthetic/``).
    """

    Config = SyntheticConfig

    def __init__(self, params: SyntheticConfig, cache_dir: str | os.PathLike):
        super().__init__(params, cache_dir)
        self.spec = input_spec(params)
        data = load_or_generate(params, cache_dir)
        if params.train_fraction < 1:
            keep = train_subset(len(data["train"]["label"]), params.train_fraction, params.seed)
            data["train"] = {k: v[keep] for k, v in data["train"].items()}
        self.splits = {s: TensorSplit(s, **data[s]) for s in SPLITS}
        self.fingerprint = config_hash(params)
        if params.train_fraction < 1:
            self.fingerprint += f"-train{params.train_fraction:g}"

    @classmethod
    def input_spec(cls, params: SyntheticConfig) -> InputSpec:
        return input_spec(params)

    @classmethod
    def prepare(cls, params: SyntheticConfig, cache_dir: str | os.PathLike) -> None:
        """Generate and cache the data ahead of the trials (the sweep driver calls this once)."""
        load_or_generate(params, cache_dir)
