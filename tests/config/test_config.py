"""Run and sweep configs: include, --set, every error at once, sweep expansion, round trips.

The dataset card and its format/task come from ``toyplug`` (``tests/toy.py``), a real plug-in distribution written
to a temp folder, so these tests use the plug-in mechanism and the shipped methods/backbones.
"""

from __future__ import annotations

import json

import pytest
from toy import RUN, SWEEP

from harness.config import ConfigError, RunSpec, flatten, load_config, parse_override
from harness.config.sweep import SweepSpec


def test_run_resolves_typed_sections(toy):
    spec = load_config(toy("quick.yaml", RUN))
    assert isinstance(spec, RunSpec)
    assert spec.name == "quick"  # defaults to the file stem
    assert spec.dataset.format == "toyfmt" and spec.dataset.card["path"].endswith("toy.yaml")
    assert (spec.dataset.params.num_clips, spec.dataset.params.num_classes) == (8, 5)  # card default, file override
    assert spec.task_name == "toytask"  # the card's default task
    assert type(spec.method).__name__ == "MBTConfig" and spec.method.fusion_layer == 2
    assert spec.backbone.depth == 4 and spec.backbone.name == "tiny"
    assert spec.train.epochs == 2 and spec.train.batch_size == 32


def test_include_merges_in_order_and_detects_cycles(toy):
    toy("base.yaml", RUN)
    toy("mid.yaml", "include: base.yaml\ntrain: {epochs: 5, batch_size: 4}\n")
    child = toy("child.yaml", "include: [mid.yaml]\ntrain: {epochs: 7}\nmethod: {fusion_layer: 3}\n")
    spec = load_config(child)
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr) == (7, 4, 1.0e-3)
    assert spec.method.name == "mbt" and spec.method.fusion_layer == 3

    toy("a.yaml", "include: b.yaml\n")
    toy("b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match=r"include cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(toy("top.yaml", "include: a.yaml\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.lr=1e-3", ("train.lr", 0.001)),
        ("train.epochs=3", ("train.epochs", 3)),
        ("method.shared_weights=true", ("method.shared_weights", True)),
        ("cache_dir=null", ("cache_dir", None)),
        ("backbone.audio_patch=[8, 16]", ("backbone.audio_patch", [8, 16])),
        ("method.name=late", ("method.name", "late")),
    ],
)
def test_parse_override_types_values_with_yaml(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1", "x=[1"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(bad)


def test_overrides_apply_before_validation(toy):
    spec = load_config(toy("r.yaml", RUN), ["method.fusion_layer=4", "train.lr=2e-3", "seed=3"])
    assert (spec.method.fusion_layer, spec.train.lr, spec.seed) == (4, 2e-3, 3)
    # late has no fusion_layer: the stale key from the file is reported, with the file's key path
    with pytest.raises(ConfigError) as e:
        load_config(toy("r2.yaml", RUN), ["method.name=late"])
    assert [k for k, _ in e.value.errors] == ["method.fusion_layer"]


def test_every_error_at_once_in_the_users_spelling(toy):
    path = toy("bad.yaml", RUN.replace("name: toy", "name: toyy").replace("epochs: 2", "epochz: 2"))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["method.fusion_layer=13"])
    errors = dict(e.value.errors)
    assert len(errors) == 3, e.value.errors
    assert "unknown dataset 'toyy' (did you mean 'toy'?); valid datasets:" in errors["dataset.name"]
    assert "unknown key 'epochz' (did you mean 'epochs'?)" in errors["train.epochz"]
    assert "must be in [0, 4]" in errors["--set method.fusion_layer=13"]
    assert str(e.value).splitlines()[2].startswith("--set method.fusion_layer=13: ")


def test_top_level_typo_and_unknown_method(toy):
    with pytest.raises(ConfigError) as e:
        load_config(toy("t.yaml", RUN + "trian: {epochs: 1}\n"), ["method.name=mbtt"])
    errors = dict(e.value.errors)
    assert "did you mean 'train'" in errors["trian"]
    assert "unknown method 'mbtt' (did you mean 'mbt'?)" in errors["--set method.name=mbtt"]


def test_round_trip_and_flatten(toy):
    spec = load_config(toy("r.yaml", RUN))
    d = json.loads(json.dumps(spec.to_dict()))  # JSON-able, as Ray ships it
    again = RunSpec.from_dict(d)
    assert again.to_dict() == spec.to_dict()
    flat = flatten(d)
    assert flat["method.fusion_layer"] == 2 and flat["dataset.num_classes"] == 5 and flat["seed"] == 1
    assert flat["backbone.audio_patch"] == [32, 16] and flat["train.lr"] == 1.0e-3
    d["method"]["fusion_layer"] = 9
    with pytest.raises(ConfigError, match=r"method.fusion_layer: 9 is out of range"):
        RunSpec.from_dict(d)


def test_sweep_expansion_counts(toy):
    sweep = load_config(toy("s.yaml", SWEEP))
    assert isinstance(sweep, SweepSpec)
    assert len(sweep.variants) == 2 * 3 + 3
    assert sweep.num_trials == 9 * 3
    trials = sweep.trial_dicts()
    assert len(trials) == sweep.num_trials
    combos = {(t["method"]["name"], t["method"].get("fusion_layer"), t["seed"]) for t in trials}
    assert len(combos) == 27 and ("mbt", 4, 2) in combos and ("late", None, 0) in combos
    assert "search" not in sweep.base and sweep.tune.num_samples == 1 and len(sweep.source_hash) == 64


def test_sweep_override_replaces_axis_and_changes_hash(toy):
    path = toy("s.yaml", SWEEP)
    sweep = load_config(path, ["seed=5", "method.name=mbt", "tune.num_samples=1"])
    assert "seed" not in sweep.axes and sweep.base["seed"] == 5
    # the variants that set method.name to something else go: mbt's options are not tried on late
    assert sweep.variants == [{"method.fusion_layer": 0}, {"method.fusion_layer": 2}, {"method.fusion_layer": 4}]
    assert sweep.num_trials == 3
    assert sweep.source_hash != load_config(path).source_hash


def test_sweep_validates_every_value_before_starting(toy):
    text = SWEEP.replace("[0, 2, 4]", "[0, 2, 9]").replace("seed: {grid: [0, 1, 2]}", "train.lr: {loguniform: [0, 1]}")
    extra = "  train.weight_decay: {uniform: [-1.0, 0.1]}\n  train.batch_size: {choice: [8, 0]}\n"
    text = text.replace("  variants:\n", extra + "  variants:\n")
    with pytest.raises(ConfigError) as e:
        load_config(toy("s.yaml", text))
    keys = [k for k, _ in e.value.errors]
    assert "search.train.lr.loguniform" in keys  # bounds must be 0 < a < b
    assert "search.train.weight_decay (uniform value -1.0)" in keys
    assert "search.train.batch_size (choice value 0)" in keys
    assert "search.variants[0].method.fusion_layer (value 9)" in keys
    assert len(keys) == 4, e.value.errors


def test_sweep_structure_errors(toy):
    text = SWEEP.replace("name: toy_sweep\n", "").replace("seed: {grid: [0, 1, 2]}", "seed: {gird: [0, 1]}")
    text = text.replace("  variants:\n", "  method.fusion_layer: {grid: [1]}\n  variants:\n")
    with pytest.raises(ConfigError) as e:
        load_config(toy("s.yaml", text))
    errors = dict(e.value.errors)
    assert "required for sweeps" in errors["name"]
    assert "did you mean 'grid'" in errors["search.seed.gird"]
    assert "is also a search axis" in errors["search.variants[0].method.fusion_layer"]


def test_tune_only_file_is_a_sweep_with_random_axis(toy):
    text = RUN + "name: r\nsearch: {train.lr: {loguniform: [1e-4, 1e-2]}}\ntune: {num_samples: 4, mode: min}\n"
    sweep = load_config(toy("s.yaml", text))
    assert sweep.axes["train.lr"].bounds == (1e-4, 1e-2) and sweep.num_trials == 4 and sweep.variants == [{}]
    assert sweep.resolve({"train.lr": 5e-3}).train.lr == 5e-3
    with pytest.raises(ValueError, match="grid-only"):
        sweep.trial_dicts()


def test_seeds_are_the_only_replicates(toy):
    """num_samples > 1 on a grid-only sweep would rerun identical trials: refused; with drawn axes it draws seeds."""
    path = toy("s.yaml", SWEEP)
    with pytest.raises(ConfigError) as e:
        load_config(path, ["tune.num_samples=3"])
    (key, msg), *_ = e.value.errors
    assert key == "tune.num_samples" and "27 distinct trials 3 times" in msg and "search: {seed:" in msg
    text = RUN + "name: r\nsearch: {train.lr: {loguniform: [1e-4, 1e-2]}}\ntune: {num_samples: 4}\n"
    sweep = load_config(toy("r.yaml", text))
    assert sweep.axes["seed"].kind == "randint" and sweep.num_trials == 4


def test_set_narrows_a_search_axis(toy):
    path = toy("s.yaml", SWEEP)
    sweep = load_config(path, ["seed=[0,2]", "method.name=mbt,late"])
    assert sweep.axes["seed"].values == (0, 2)
    names = {v["method.name"] for v in sweep.variants}
    assert names == {"mbt", "late"} and sweep.num_trials == (3 + 1) * 2
    assert load_config(path, ["seed=1"]).base["seed"] == 1  # a single value still replaces the axis
