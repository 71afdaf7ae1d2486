"""The ``toyplug`` plug-in (a dataset format and a task, through entry points) and its ``toy`` dataset card.

A real plug-in distribution (dist-info + entry points) written to a temp folder, so the config and CLI tests use the
plug-in mechanism and the shipped methods/backbones; the ``toy`` fixture (``tests/conftest.py``) activates it.
"""

from __future__ import annotations

from pathlib import Path

from harness import registry

TOY_PLUGIN = '''
from pydantic import BaseModel, ConfigDict, Field

from harness.api import Dataset, Task


class ToyFormat(Dataset):
    """Format loader stand-in: only its Config matters to validation."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_clips: int = Field(8, ge=1, description="clips per split")
        num_classes: int = Field(3, ge=2, description="number of classes")


class ToyTask(Task):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label_smoothing: float = Field(0.0, ge=0, le=1, description="cross-entropy label smoothing")
'''
ENTRY_POINTS = "[harness.formats]\ntoyfmt = toyplug:ToyFormat\n\n[harness.tasks]\ntoytask = toyplug:ToyTask\n"
CARD = "name: toy\nformat: toyfmt\ntask: toytask\ndescription: a toy card for the tests\nparams: {num_clips: 8}\n"


def write_toy_plugin(root: Path) -> tuple[Path, Path]:
    """Write the ``toyplug`` distribution and a ``toy`` dataset card; returns (site dir, cards dir)."""
    site, cards = root / "site", root / "cards"
    dist = site / "toyplug-0.1.dist-info"
    dist.mkdir(parents=True)
    cards.mkdir()
    (site / "toyplug.py").write_text(TOY_PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (cards / "toy.yaml").write_text(CARD)
    return site, cards


def refresh_all() -> None:
    for reg in (registry.METHODS, registry.TASKS, registry.DATASETS, registry.BACKBONES, registry.ENGINES):
        reg.refresh()
    registry.FORMATS.refresh()


RUN = """\
seed: 1
dataset: {name: toy, num_classes: 5}
backbone: {name: tiny}
method: {name: mbt, fusion_layer: 2}
train: {epochs: 2, lr: 1.0e-3}
"""


SWEEP = """\
name: toy_sweep
dataset: {name: toy}
train: {epochs: 1}
search:
  seed: {grid: [0, 1, 2]}
  variants:
    - {method.name: [vanilla, mbt], method.fusion_layer: [0, 2, 4]}
    - {method.name: [late, audio_only, video_only]}
tune: {num_samples: 1}
"""
