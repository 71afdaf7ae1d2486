"""``synthetic_avs``: the embedded default's clips, labelled with the sounding object's mask per frame (AVSBench-like).

The clips are those of ``harness.data.synthetic`` (same generator, same draws): ``1 + distractors`` objects of
distinct shapes and colours, one of which sounds (its shape sets the pitch, its flashes are the tone bursts). Here
every object stays visible between its flashes by default (``idle_brightness: 0.5``), so each frame shows all of them
and the label, the visible pixels of the sounding object per frame (uint8 (T, H, W) in {0, 1}), says which one
sounds: a video-only model sees the shapes but cannot tell which is heard (with one distractor it can at best pick one
of the two, or mark both at half confidence); binding the pitch or the bursts' timing to an object needs the audio.
With ``idle_brightness: 0`` an object is drawn only while it flashes, and the mask is empty in the frames where the
sounding object is dark (AVSBench's frames without a visible sounding object).

Shapes: ``N`` clips, ``T`` frames, ``H = W = image_size``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import Field

from harness.api import Dataset, InputSpec
from harness.data.base import TensorSplit
from harness.data.synthetic import SPLITS, SyntheticConfig, config_hash, generate

KEYS = ("video", "audio", "mask")


class SyntheticAVSConfig(SyntheticConfig):
    """The synthetic dataset's parameters (``harness.data.synthetic``), objects visible between flashes by default."""

    idle_brightness: float = Field(
        0.5, ge=0, le=1, description="brightness of an object outside its flashes (0.5: every object always visible)"
    )


def input_spec(cfg: SyntheticAVSConfig) -> InputSpec:
    return InputSpec(cfg.frames, cfg.image_size, cfg.n_mels, cfg.n_frames, num_classes=1)


def load_or_generate(cfg: SyntheticAVSConfig, cache_dir: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The splits with their masks, generated and cached (atomically) on first use."""
    from safetensors.torch import load_file

    from harness.data.storage import save_atomic

    path = Path(cache_dir) / "synthetic_avs" / f"{config_hash(cfg)}.safetensors"
    if not path.exists():
        data = generate(cfg, masks=True)
        save_atomic({f"{s}/{k}": d[k].contiguous() for s, d in data.items() for k in KEYS}, path)
    flat = load_file(str(path))
    return {s: {k: flat[f"{s}/{k}"] for k in KEYS} for s in SPLITS}


class SyntheticAVSDataset(Dataset):
    """The ``synthetic_avs`` format: generated on first use, cached by parameter hash, held in memory; label = masks.

    Args:
        params: the dataset's parameters.
        cache_dir: root of the harness cache (the clips go under ``<cache_dir>/synthetic_avs/``).
    """

    Config = SyntheticAVSConfig

    def __init__(self, params: SyntheticAVSConfig, cache_dir: str | os.PathLike):
        super().__init__(params, cache_dir)
        self.spec = input_spec(params)
        data = load_or_generate(params, cache_dir)
        self.splits = {s: TensorSplit(s, data[s]["video"], data[s]["audio"], data[s]["mask"]) for s in SPLITS}
        self.fingerprint = config_hash(params)

    @classmethod
    def input_spec(cls, params: SyntheticAVSConfig) -> InputSpec:
        return input_spec(params)

    @classmethod
    def prepare(cls, params: SyntheticAVSConfig, cache_dir: str | os.PathLike) -> None:
        load_or_generate(params, cache_dir)
