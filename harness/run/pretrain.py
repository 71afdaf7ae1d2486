"""A synthetic-pretrained frozen backbone, the embedded default's stand-in for ImageNet / AudioSet pretraining.

LAVISH and its parameter-efficient baselines (``harness/models/shared_vit.py``) adapt a *pretrained* frozen ViT; a
random frozen ViT makes their comparison meaningless. With ``backbone.pretrained: synthetic`` the harness pretrains the
shared backbone (tokeniser, blocks, final norm) once per configuration, caches it, and loads it into the method
right after init (``harness.run.trial.build_model``).

The objectives are unimodal only, so that audio-visual binding is left for the adapters to learn, as an image
model and an audio model know nothing of each other:
- video (an image model's view): each video token predicts which colours and which shapes are drawn in its frames,
  and the video CLS which ones are drawn anywhere in the clip (multi-label, BCE);
- audio (an audio tagger's view): each audio token predicts whether a tone sounds in its time span (BCE), and the
  audio CLS the pitch and the timbre of the clip's sound (two cross-entropies).
The clips come from a draw of the run's own synthetic generator with another seed (``seed + seed_offset``), so no
clip of the run's splits is seen, and the labels of the downstream task (colour of the *sounding* object x timbre)
are never a target. Its prediction heads are discarded.

Cache: ``<cache_dir>/pretrained/<key>.safetensors`` with ``key`` a hash of the backbone config, the tokenisation
(``method.audio_embed``, with ``audio_orientation`` for the image path), the generator's parameters and the
pretraining settings. Two trials that ask at once serialise on a file lock; the file is written under a temporary
name and renamed, so a reader never sees half of it. Pretraining runs under its own seeds in a forked RNG, so a
trial draws the same numbers with a cold or a warm cache.

Shapes: ``B`` batch, ``N_m`` tokens of modality m (CLS included), ``D`` width, ``C`` colours, ``S`` shapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from harness.config import ConfigError
from harness.data.base import TensorSplit
from harness.data.synthetic import SyntheticConfig, generate, input_spec
from harness.models.backbones import BackboneConfig, audio_grid, video_grid

VERSION = 2  # bump when the objectives or the loop change: it is part of the cache key (2: (time x mel) audio images)


class PretrainConfig(BaseModel):
    """How the synthetic backbone is pretrained; every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid")

    clips: int = Field(2000, ge=64, description="clips of the pretraining draw")
    epochs: int = Field(10, ge=1, description="passes over the pretraining draw")
    batch_size: int = Field(64, ge=2, description="clips per step")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (cosine decay to 0 after 1 epoch of warmup)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay on matrices")
    seed_offset: int = Field(7919, description="the draw's generator seed is the dataset's seed + this")
    seed: int = Field(0, description="seed of the backbone's init and of the batch order")


def pretrain_data_config(data: SyntheticConfig, cfg: PretrainConfig) -> SyntheticConfig:
    """The disjoint draw: the run's generator parameters with another seed and ``cfg.clips`` training clips."""
    return data.model_copy(update={"seed": data.seed + cfg.seed_offset, "clips_train": cfg.clips,
                                   "clips_val": 8, "clips_test": 8})  # fmt: skip


def cache_key(backbone: BackboneConfig, audio_embed: str, data: SyntheticConfig, cfg: PretrainConfig) -> str:
    """Hash of everything the pretrained weights depend on."""
    arch = backbone.model_dump(mode="json", exclude={"name", "pretrained", "checkpoint", "tubelet_init"})
    blob = {"v": VERSION, "backbone": arch, "audio_embed": audio_embed, "data": data.model_dump(mode="json"),
            "pretrain": cfg.model_dump(mode="json")}  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _overlap(n_tokens: int, n_units: int) -> Tensor:
    """(n_tokens, n_units) bool: token i's share of the clip [i / n_tokens, (i + 1) / n_tokens) meets unit j's."""
    i, j = torch.arange(n_tokens)[:, None], torch.arange(n_units)[None, :]
    return (i * n_units < (j + 1) * n_tokens) & (j * n_tokens < (i + 1) * n_units)


class PretrainHeads(nn.Module):
    """The unimodal objectives over a frozen-backbone method's tokens (``FrozenBackbone.encode``).

    Args:
        method: a ``harness.models.shared_vit.FrozenBackbone`` (its ``tokens``, ``blocks`` and ``norm`` are trained).
        data: the generator's parameters (colours, shapes, timbres, frames, slots).
    """

    def __init__(self, method: nn.Module, data: SyntheticConfig):
        super().__init__()
        d, bb, spec = method.embed_dim, method.backbone, method.spec
        self.colours, self.shapes, self.timbres = data.colours, data.shapes, data.timbres
        self.video_token = nn.Linear(d, data.colours + data.shapes)
        self.video_cls = nn.Linear(d, data.colours + data.shapes)
        self.audio_token = nn.Linear(d, 1)
        self.audio_cls = nn.Linear(d, data.shapes + data.timbres)
        tv, h, w = video_grid(bb, spec)
        image = method.cfg.audio_embed == "image"
        if image:
            bb = bb.model_copy(update={"audio_patch": (bb.patch_size, bb.patch_size)})
        fa, ta = audio_grid(bb, spec)
        # which frames each video token covers (time-major tokens) and which slots each audio token (freq-major, or
        # time-major for a (time x mel) image)
        self.register_buffer("video_frames", _overlap(tv, data.frames).repeat_interleave(h * w, 0), persistent=False)
        slots = _overlap(ta, data.slots)
        time_major = image and method.cfg.audio_orientation == "time_mel"
        self.register_buffer("audio_slots", slots.repeat_interleave(fa, 0) if time_major else slots.repeat(fa, 1),
                             persistent=False)  # fmt: skip

    def loss(self, z: dict[str, Tensor], batch: dict) -> Tensor:
        """Sum of the video and the audio objectives for tokens ``z`` (``{m: (B, 1 + N_m, D)}``)."""
        seen = torch.cat([batch["frame_colours"], batch["frame_shapes"]], dim=-1).float()  # (B, T, C + S)
        per_token = (self.video_frames.float() @ seen).clamp(max=1)  # (B, Nv, C + S): drawn in the token's frames
        video = F.binary_cross_entropy_with_logits(self.video_token(z["video"][:, 1:]), per_token)
        video = video + F.binary_cross_entropy_with_logits(self.video_cls(z["video"][:, 0]), seen.amax(1))
        sounding = (self.audio_slots.float() @ batch["sounding"].float().T).T.clamp(max=1)  # (B, Na)
        audio = F.binary_cross_entropy_with_logits(self.audio_token(z["audio"][:, 1:]).squeeze(-1), sounding)
        pitch, timbre = self.audio_cls(z["audio"][:, 0]).split([self.shapes, self.timbres], dim=-1)
        audio = audio + F.cross_entropy(pitch, batch["pitch"]) + F.cross_entropy(timbre, batch["timbre"])
        return video + audio


def pretrain(method: nn.Module, data: SyntheticConfig, cfg: PretrainConfig) -> dict[str, Tensor]:
    """Train ``method``'s backbone (all of it, in place) on the unimodal objectives; its plain-keyed state.

    Args:
        method: a freshly built ``FrozenBackbone``; its frozen flags are ignored here (everything trains).
        data: the pretraining draw's parameters (:func:`pretrain_data_config`).
        cfg: the schedule.
    """
    from harness.models.shared_vit import BACKBONE_PARTS, backbone_state

    split = generate(data, latents=True)["train"]
    latents = {k: v for k, v in split.items() if k not in ("video", "audio", "label")}
    clips = TensorSplit("pretrain", split["video"], split["audio"], split["label"])
    heads = PretrainHeads(method, data)
    params = [p for part in BACKBONE_PARTS for p in getattr(method, part).parameters()] + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    steps = len(clips) // cfg.batch_size
    total, warm = cfg.epochs * steps, steps

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    method.train()
    for epoch in range(cfg.epochs):
        for batch in clips.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch, drop_last=True):
            idx = torch.tensor([int(i.rsplit("-", 1)[1]) for i in batch["id"]])  # ids are "<split>-<index>"
            batch.update({k: v[idx] for k, v in latents.items()})
            z, _ = method.encode(batch)
            loss = heads.loss(z, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return {k: v.detach().clone().contiguous() for k, v in backbone_state(method).items()}


def pretrained_backbone(
    backbone: BackboneConfig,
    audio_embed: str,
    data: SyntheticConfig,
    cache_dir: str | os.PathLike,
    cfg: PretrainConfig | None = None,
) -> tuple[dict[str, Tensor], str]:
    """The cached pretrained backbone state (plain keys) and its key, pretraining it first if needed.

    Args:
        backbone: the run's backbone (its ``pretrained``, ``checkpoint`` and ``name`` do not matter).
        audio_embed: the method's tokenisation (:func:`tokenisation`: ``image``, ``image:mel_time`` or
            ``spectrogram``); each has its own tokeniser or token layout.
        data: the run's synthetic generator parameters (the draw uses another seed).
        cache_dir: root of the harness cache.
        cfg: the pretraining settings; default :class:`PretrainConfig`.
    """
    from filelock import FileLock
    from safetensors.torch import load_file

    from harness.data.storage import save_atomic
    from harness.models.shared_vit import FrozenBackbone, FrozenConfig

    cfg = cfg or PretrainConfig()
    draw = pretrain_data_config(data, cfg)
    key = cache_key(backbone, audio_embed, draw, cfg)
    path = Path(cache_dir) / "pretrained" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):  # the second of two concurrent trials waits, then loads
        if not path.exists():
            tick = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                bb = backbone.model_copy(update={"pretrained": "none", "checkpoint": None})
                embed, _, orientation = audio_embed.partition(":")
                fields = {"audio_embed": embed, **({"audio_orientation": orientation} if orientation else {})}
                model = FrozenBackbone(FrozenConfig(name="pretrain", **fields), bb, input_spec(draw))
                state = pretrain(model, draw, cfg)
            save_atomic(state, path, metadata={"harness.run.pretrain": json.dumps(cfg.model_dump())})
            print(f"pretrained the synthetic backbone {key} in {time.perf_counter() - tick:.1f} s: {path}",
                  file=sys.stderr)  # fmt: skip
    return load_file(str(path)), key


def tokenisation(method_cfg) -> str:
    """How a frozen-backbone method tokenises audio: ``spectrogram``, ``image`` ((time x mel), the default) or
    ``image:mel_time``."""
    if method_cfg.audio_embed != "image":
        return method_cfg.audio_embed
    return "image" if method_cfg.audio_orientation == "time_mel" else f"image:{method_cfg.audio_orientation}"


def pretrained_key(spec) -> str | None:
    """The cache key of the run's synthetic-pretrained backbone (its tag), or None when ``backbone.pretrained`` is
    ``none``; what :func:`pretrained_backbone` files the weights under."""
    if spec.backbone.pretrained == "none":
        return None
    cfg = PretrainConfig()
    return cache_key(spec.backbone, tokenisation(spec.method), pretrain_data_config(spec.dataset.params, cfg), cfg)


def apply_pretrained(method: nn.Module, spec, cache_dir: str | os.PathLike) -> str | None:
    """Load the run's pretrained backbone into ``method`` when ``backbone.pretrained`` asks for one.

    Args:
        method: the freshly built method.
        spec: the run (``harness.config.RunSpec``).
        cache_dir: root of the harness cache.

    Returns:
        The pretrained weights' key (for the run's tags), or None when ``backbone.pretrained`` is ``none``.

    Raises:
        ConfigError: the method has no frozen shared backbone, the dataset is not synthetic, or a checkpoint is
            also set.
    """
    from harness.models.shared_vit import FrozenBackbone, load_backbone_state

    if spec.backbone.pretrained == "none":
        return None
    key = "backbone.pretrained"
    if not isinstance(method, FrozenBackbone):
        msg = f"synthetic: method {spec.method.name!r} has no frozen shared backbone to start from"
        raise ConfigError([(key, msg + "; set it only for lavish, avish, adapter, lora, prompt, frozen")])
    if spec.dataset.format != "synthetic":
        msg = f"synthetic: needs a synthetic dataset (dataset.name={spec.dataset.name!r} is {spec.dataset.format!r})"
        raise ConfigError([(key, msg + "; use backbone.checkpoint for real weights")])
    if spec.backbone.checkpoint is not None:
        raise ConfigError([(key, "synthetic and backbone.checkpoint exclude each other; set one of them")])
    state, digest = pretrained_backbone(spec.backbone, tokenisation(method.cfg), spec.dataset.params, cache_dir)
    load_backbone_state(method, state, source=f"the synthetic-pretrained backbone {digest}")
    return digest
