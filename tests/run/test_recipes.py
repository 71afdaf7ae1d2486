"""The papers' run files (``sweeps/papers/``): they validate as shipped, and each trains one epoch at tiny size on the
synthetic files of its dataset's layout (``harness synth``), from a tiny checkpoint file where the recipe names one.

Only the sizes are overridden (frames, image and spectrogram size, width, depth, epochs, batch); the recipe's
optimiser, lr groups, loss reduction, task, front end and method options are what runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from harness.api import InputSpec
from harness.cli import main
from harness.config import RunSpec, load_config, load_yaml
from harness.run.trial import run_trial

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "sweeps" / "papers").glob("*.yaml"))
LAYOUT = {"mbt_audioset_mini": "audioset", "mbt_vggsound": "vggsound", "mbt_epic_kitchens": "epic_kitchens_100",
          "lavish_ave_swinv2l": "ave", "lavish_ave_vitb16": "ave",
          "avbert_kinetics_sounds": "kinetics_sounds"}  # fmt: skip
DATA = ["frames=2", "image_size=32", "resize=32", "n_mels=16", "target_frames=32", "val_fraction=0.4", "test_clips=1"]
WINDOWED = ["window_seconds=1.0"]  # audioset, vggsound: a 1-s video window of the synthetic 10-s clips
SEGMENTS = ["frames=10", "target_frames=16"]  # ave: one frame and one 16-frame audio window per second, scored per pair
VIT = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16, "audio_patch": [16, 16]}
SWIN = {"family": "swinv2", "embed_dim": 16, "depth": 3, "num_heads": 2, "stage_depths": [2, 1], "window_size": 2,
        "patch_size": 4, "audio_patch": [4, 4], "drop_path": 0.0}  # fmt: skip
METHOD = {"mbt": ["fusion_layer=1"], "lavish": ["reduction=4"], "lowrank": ["rank=4", "unimodal_layers=1",
          "multimodal_layers=1"]}  # fmt: skip
TRAIN = ["epochs=1", "batch_size=2", "eval_batch_size=4", "threads=1"]


def test_every_recipe_validates_as_shipped(tmp_path, monkeypatch, capsys):
    """In a working directory that holds the weights files the recipes name (paths are relative to it)."""
    assert {p.stem for p in RECIPES} == set(LAYOUT)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    for name in ("ViT-B_16.npz", "swinv2_large_window12_192.ms_in22k.safetensors",
                 "vit_base_patch16_224.augreg_in21k.safetensors"):  # fmt: skip
        (tmp_path / "weights" / name).touch()
    for recipe in RECIPES:  # validate checks that dataset.root is a folder (its contents are prepare's to check)
        (tmp_path / yaml.safe_load(recipe.read_text())["dataset"]["root"]).mkdir(parents=True, exist_ok=True)
    assert main(["validate", *map(str, RECIPES)]) == 0
    assert capsys.readouterr().out.count("ok (sweep with 3 trials)") == len(RECIPES)
    (tmp_path / "weights" / "ViT-B_16.npz").unlink()  # validate names what is missing
    assert main(["validate", str(ROOT / "sweeps" / "papers" / "mbt_vggsound.yaml")]) == 2
    assert "backbone.checkpoint: 'weights/ViT-B_16.npz' is not a file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One synthetic copy of each layout the recipes read (6 clips), written once."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in sorted(set(LAYOUT.values())):
        assert main(["synth", "--out", str(root / layout), "--layout", layout, "--clips", "6"]) == 0
    return root


def _vit_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


def _swin_checkpoint(path: Path) -> Path:
    from harness.models.backbones import BackboneConfig
    from methods.parts.swin_lavish import make_swinv2

    torch.manual_seed(0)
    spec = InputSpec(frames=2, image_size=16, n_mels=16, n_frames=32, num_classes=29)
    save_file(make_swinv2(BackboneConfig(name="t", **SWIN), spec).state_dict(), path)
    return path


@pytest.mark.parametrize("recipe", [p.stem for p in RECIPES])
def test_every_recipe_trains_at_tiny_size_on_its_layout(recipe, layouts, tmp_path, capsys):
    path = ROOT / "sweeps" / "papers" / f"{recipe}.yaml"
    base = load_yaml(path)  # the recipe as written
    layout = LAYOUT[recipe]
    swin = base["backbone"]["name"].startswith("swinv2")
    extra = {"audioset": WINDOWED, "vggsound": WINDOWED, "ave": SEGMENTS}.get(layout, [])
    data = [f"dataset.root={layouts / layout}", f"dataset.cache={tmp_path / 'cache'}",
            *(f"dataset.{s}" for s in DATA + extra)]  # fmt: skip
    if swin:  # 16² frames and 16 x 16 audio windows for the tiny Swin's 4² patches and 2-token windows
        data += ["dataset.image_size=16", "dataset.resize=16"]
    size = SWIN if swin else VIT
    sets = [*data, *(f"backbone.{k}={v}" for k, v in size.items()),
            *(f"method.{s}" for s in METHOD[base["method"]["name"]]), *(f"train.{s}" for s in TRAIN)]  # fmt: skip
    if base["backbone"].get("checkpoint"):
        ckpt = (_swin_checkpoint if swin else _vit_checkpoint)(tmp_path / "backbone.safetensors")
        sets.append(f"backbone.checkpoint={ckpt}")
    sweep = load_config(path, sets)
    spec = RunSpec.from_dict(sweep.trial_dicts()[0])
    recipe_train = base["train"]  # what the recipe sets reaches the trial unchanged
    assert all(getattr(spec.train, k) == v for k, v in recipe_train.items() if k not in {s.split("=")[0] for s in TRAIN}
               and k != "lr_groups")  # fmt: skip
    assert [g.model_dump() for g in spec.train.lr_groups] == [
        {"weight_decay": None, **g} for g in recipe_train.get("lr_groups", [])
    ]
    final = run_trial(spec)
    if base["backbone"].get("checkpoint"):
        assert "loaded" in capsys.readouterr().err  # the tiny checkpoint went in
    task = spec.task_name
    primary = {"multilabel": "map", "localization": "seg_acc", "multihead": "action_top1"}.get(task, "top1")
    assert final["train/loss"] == final["train/loss"] and 0 <= final[f"test/{primary}"] <= 100


def test_every_recipe_has_a_report_spec_with_its_reported_number():
    """reports/papers/<recipe>.yaml reads the recipe's sweep and names the reported number for its method's row."""
    from harness.report.spec import load_spec

    for path in RECIPES:
        raw, spec = load_yaml(path), load_spec(ROOT / "reports" / "papers" / f"{path.stem}.yaml")
        assert spec.sweep == raw["name"] and spec.rows == ["method.name"], path.stem
        ((row, number),) = spec.reference.items()
        assert row == raw["method"]["name"] and f"{number}" in path.read_text().split("\nname:")[0], path.stem
        primary = {"multilabel": "map", "localization": "seg_acc", "multihead": "action_top1"}.get(raw["task"]["name"])
        assert "metric" in spec.columns and raw["tune"]["metric"] == f"val/{primary or 'top1'}", path.stem
