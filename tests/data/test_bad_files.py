"""Broken input files: each error names the file and the line and says what to do; a clip listed twice is kept once
and named in the manifest; truncated or foreign checkpoints raise CheckpointError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from harness.api import CheckpointError
from harness.cli import main
from harness.data import annotations as A
from harness.models.weights import read_checkpoint
from harness.run.prepare import resolve_params

TINY = ["frames=2", "image_size=32", "resize=32", "n_mels=16", "target_frames=32", "val_fraction=0.4"]


@pytest.mark.parametrize("start", ["notanumber", "1e308", "inf", "-5"])
def test_a_bad_start_names_the_file_and_line(tmp_path, start):
    csv = tmp_path / "vggsound.csv"
    csv.write_text(f"abc,10,dog barking,train\nxyz,{start},dog barking,test\n")
    with pytest.raises(A.AnnotationError, match=rf"vggsound.csv:2: start '{start}' is not .*; fix or delete that row"):
        A.vggsound_rows(csv)
    seg = tmp_path / "eval_segments.csv"
    seg.write_text(f'# comment\n# YTID, start_seconds, end_seconds, positive_labels\nabc, {start}, 10.0, "/m/09x0r"\n')
    with pytest.raises(A.AnnotationError, match=r"eval_segments.csv:3: start"):
        A.audioset_segments(seg)
    ave = tmp_path / "Annotations.txt"
    ave.write_text(f"Church bell&abc&good&0&10\nChurch bell&xyz&good&{start}&10\n")
    with pytest.raises(A.AnnotationError, match=r"Annotations.txt:2: start"):
        A.ave_annotations(ave)


def test_bad_epic_rows_and_class_ids_name_the_line(tmp_path):
    csv = tmp_path / "EPIC_100_train.csv"
    head = "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
    good = "P01_01_0,P01,P01_01,00:00:01.00,00:00:02.00,1,2\n"
    csv.write_text(head + good + "P01_01_1,P01,P01_01,notatime,00:00:03.0,1,2\n")
    with pytest.raises(A.AnnotationError, match=r"EPIC_100_train.csv:3: timestamp 'notatime'"):
        A.epic_segments(csv)
    csv.write_text(head + "P01_01_0,P01,P01_01,00:00:01.00,00:00:02.00,one,2\n")
    with pytest.raises(A.AnnotationError, match=r"EPIC_100_train.csv:2: verb_class 'one' is not a non-negative"):
        A.epic_segments(csv)
    classes = tmp_path / "classes.csv"
    classes.write_text("id,key,instances,category\n0,take,1,x\nx1,put,1,x\n")
    with pytest.raises(A.AnnotationError, match=r"classes.csv:3: id 'x1' is not a non-negative integer"):
        A.epic_classes(classes)


def test_a_duplicate_row_is_dropped_and_named_in_the_manifest(tmp_path, capsys):
    root, cache = tmp_path / "root", tmp_path / "cache"
    assert main(["synth", "--out", str(root), "--layout", "vggsound", "--clips", "8"]) == 0
    rows = (root / "vggsound.csv").read_text().splitlines()
    train = next(r for r in rows if r.endswith(",train"))
    (root / "vggsound.csv").write_text("\n".join([*rows, train]) + "\n")  # the same clip twice
    sets = [a for s in TINY for a in ("--set", s)]
    capsys.readouterr()
    assert main(["prepare", "vggsound", "--root", str(root), "--cache", str(cache), *sets]) == 0
    assert "dropped 1 duplicate annotation rows" in capsys.readouterr().out
    cls, params = resolve_params("vggsound", str(root), str(cache), TINY)
    manifest = json.loads((cls.cache_folder(params, tmp_path) / "manifest.json").read_text())
    ytid, start = train.split(",")[:2]
    assert manifest["duplicates"] == [f"{ytid}_{int(start):06d}"] and manifest["counts"]["listed"] == len(rows)
    data = cls(params, tmp_path)
    ids = [r.id for split in data.splits.values() for r in split.records]
    assert len(ids) == len(set(ids)) == len(rows)  # every clip once, in one split


def test_truncated_and_foreign_checkpoints_raise_checkpoint_error(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({"pos_embed": torch.zeros(1, 5, 8), "cls_token": torch.zeros(1, 1, 8)}, str(path))
    path.write_bytes(path.read_bytes()[:-20])  # cut short, as by an interrupted download
    with pytest.raises(CheckpointError, match=r"cannot read .*vit.safetensors as a .safetensors checkpoint .*download"):
        read_checkpoint(path)
    pth = tmp_path / "vit.pth"
    torch.save({"pos_embed": torch.zeros(3)}, pth)
    pth.write_bytes(pth.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"vit.pth as a .pth checkpoint"):
        read_checkpoint(pth)
    npz = tmp_path / "vit.npz"
    npz.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"vit.npz as a .npz checkpoint"):
        read_checkpoint(npz)
