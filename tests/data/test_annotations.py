"""The annotation parsers on the datasets' real files (``tests/fixtures/annotations``, counts from its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from harness.data import annotations as A
from harness.registry import datasets_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations"
REAL = Path(os.environ.get("HARNESS_ANNOTATIONS") or FIXTURES)


def test_vggsound_classes_and_official_test_list():
    classes = A.vggsound_classes(REAL / "vggsound/stat.csv")
    assert len(classes) == 309 and classes == sorted(classes)
    assert "bird chirping, tweeting" in classes  # a quoted name with a comma
    test = A.vggsound_test_list(REAL / "vggsound/test.csv")
    assert len(test) == 15446
    assert test[0] == ("glLQrEijrKg", 300, "playing hammond organ")
    assert {label for _, _, label in test} <= set(classes)


def test_audioset_class_list():
    classes = A.audioset_classes(REAL / "audioset/class_labels_indices.csv")
    assert len(classes) == 527
    assert classes[0] == ("/m/09x0r", "Speech") and classes[1] == ("/m/05zppz", "Male speech, man speaking")
    assert len({mid for mid, _ in classes}) == 527


def test_audioset_segments_official_form(tmp_path):
    f = tmp_path / "eval_segments.csv"
    f.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=20371, num_segs=20371, num_unique_labels=527, num_positive_labels=51804\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"\n'
        '--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"\n'
    )
    rows = A.audioset_segments(f)
    assert rows == [("--4gqARaEJE", 0.0, 10.0, ["/m/068hy", "/m/07q6cd_", "/m/0bt9lr", "/m/0jbk"]),
                    ("--BfvyPmVMo", 20.0, 30.0, ["/m/03l9g"])]  # fmt: skip


def test_ave_rows_splits_and_class_order():
    rows = A.ave_annotations(REAL / "ave/Annotations.txt")
    assert len(rows) == 4143
    assert rows[1] == ("Church bell", "MH3m4AwEcRY", 6, 8)
    classes = A.ave_classes(rows)
    assert len(classes) == 28 and classes[:3] == ["Church bell", "Male speech, man speaking", "Bark"]
    assert classes != sorted(classes)  # first appearance, not alphabetical
    card = yaml.safe_load((datasets_dir() / "ave.yaml").read_text())
    assert card["params"]["classes"] == classes  # the card pins exactly the official order
    orders = {s: A.ave_order(REAL / f"ave/{s}_order.h5") for s in ("train", "val", "test")}
    assert [len(orders[s]) for s in ("train", "val", "test")] == [3339, 402, 402]
    union = set(orders["train"]) | set(orders["val"]) | set(orders["test"])
    assert len(union) == 4143 and union == set(range(4143))  # disjoint and covering


def test_ave_per_second_labels_follow_start_end(tmp_path):
    from harness.data.formats import AVEConfig, AVEDataset

    for name in ("Annotations.txt", "train_order.h5", "val_order.h5", "test_order.h5"):
        (tmp_path / name).symlink_to(REAL / "ave" / name)
    params = AVEConfig(root=str(tmp_path), num_classes=28)
    recs = AVEDataset.list_clips(params)
    assert len(recs) == 4143 and sum(r.split == "train" for r in recs) == 3339
    second = next(r for r in recs if r.id == "MH3m4AwEcRY_1")  # Church bell, seconds [6, 8)
    assert second.label == [28] * 6 + [0, 0] + [28] * 2


def test_epic_classes_and_validation_segments():
    verbs = A.epic_classes(REAL / "epic_kitchens_100/EPIC_100_verb_classes.csv")
    nouns = A.epic_classes(REAL / "epic_kitchens_100/EPIC_100_noun_classes.csv")
    assert (len(verbs), len(nouns)) == (97, 300) and verbs[0] == "take" and nouns[0] == "tap"
    segs = A.epic_segments(REAL / "epic_kitchens_100/EPIC_100_validation.csv")
    assert len(segs) == 9668
    first = segs[0]
    assert first["narration_id"] == "P01_11_0" and first["stop"] == pytest.approx(1.89)
    assert first["verb_class"] == 0 and first["noun_class"] == 2
    assert all(s["stop"] >= s["start"] for s in segs)
    assert max(s["verb_class"] for s in segs) < 97 and max(s["noun_class"] for s in segs) < 300


def test_bad_rows_name_the_file_and_line(tmp_path):
    f = tmp_path / "Annotations.txt"
    f.write_text("Church bell&abc&good&0&10\nbroken line\n")
    with pytest.raises(A.AnnotationError, match=r"Annotations.txt:2: expected 'Category&YouTubeID"):
        A.ave_annotations(f)
    with pytest.raises(A.AnnotationError, match="does not exist"):
        A.vggsound_classes(tmp_path / "stat.csv")
