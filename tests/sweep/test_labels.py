"""Trial labels tell every trial apart, also when trials differ only in a key that a later variant sets."""

from __future__ import annotations

import yaml

from harness.config import load_config
from harness.sweep.space import describe


def test_trials_differing_in_a_later_variants_key_get_different_labels(tmp_path):
    variants = [{"method.name": ["late", "audio_only"]}, {"method.name": "mbt", "method.fusion_layer": [1, 2]}]
    sweep = {"name": "t", "dataset": {"name": "synthetic"}, "method": {"name": "late"},
             "search": {"seed": {"grid": [0]}, "variants": variants}}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    spec = load_config(path)
    labels = [describe({"seed": 0, "__variant__": v}, spec) for v in spec.variants]
    assert labels == ["method.name=late seed=0", "method.name=audio_only seed=0",
                      "method.name=mbt method.fusion_layer=1 seed=0",
                      "method.name=mbt method.fusion_layer=2 seed=0"]  # fmt: skip
    assert spec.source == path.read_text()  # what the parent run logs as sweep.yaml: the file, not its path
