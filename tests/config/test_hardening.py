"""Hostile and careless configs: alias bombs, huge or non-UTF-8 files, absurd numbers, booleans for numbers, empty
variants, missing includes, hidden section errors, unknown checkpoint suffixes, missing dataset roots, huge sweeps."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError, load_config
from harness.config.files import MAX_BYTES

BASE = {"name": "t", "dataset": {"name": "synthetic"}, "method": {"name": "mbt"}}


def _keys(path, overrides=()) -> dict[str, str]:
    """key -> its messages (joined) of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    out: dict[str, str] = {}
    for key, msg in e.value.errors:
        out[key] = f"{out[key]}; {msg}" if key in out else msg
    return out


def _bomb(levels: int = 9) -> str:
    """The "billion laughs": each line an alias list of nine of the previous, 9^9 values once expanded."""
    lines = ["name: bomb", "dataset: {name: synthetic}", "method:", "  name: mbt", "  l0: &a [x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghij"
    for i in range(1, levels):
        lines.append(f"  l{i}: &{names[i]} [{','.join(['*' + names[i - 1]] * 9)}]")
    lines.append(f"  fusion_layer: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    text = _bomb()
    assert len(text.encode()) < 450
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    tracemalloc.start()
    t0 = time.perf_counter()
    errors = _keys(path)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 200e6, (seconds, peak)
    ((key, msg),) = errors.items()
    assert key == str(path.resolve()) and "more than 100,000 YAML values once its aliases" in msg
    load_config(_write(tmp_path, BASE))  # the registry's imports, before the clock starts
    names = "abcdefghi"  # the same as one flow list through --set
    levels = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{names[i]} [{','.join(['*' + names[i - 1]] * 9)}]" for i in range(1, 9)]
    t0 = time.perf_counter()
    errors = _keys(_write(tmp_path, BASE), [f"method.fusion_layer=[{', '.join(levels)}]"])
    assert time.perf_counter() - t0 < 1.0
    assert "more than 100,000 YAML values" in next(iter(errors.values()))
    ok = tmp_path / "anchors.yaml"  # a few aliases are fine
    ok.write_text("name: t\ndataset: &d {name: synthetic}\nmethod: {name: mbt}\ntrain: &t {epochs: 1}\n")
    assert load_config(ok).train.epochs == 1


def test_recursive_aliases_huge_files_and_non_utf8_are_config_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndataset: {name: synthetic}\nmethod: &m {name: mbt, x: *m}\n")
    assert "recursive" in _keys(path)[str(path.resolve())]
    path.write_bytes(b"name: t\n# " + b"x" * MAX_BYTES + b"\n")
    assert "a config file may have at most 1,048,576" in _keys(path)["file"]
    path.write_bytes(b"name: caf\xe9\ndataset: {name: synthetic}\nmethod: {name: mbt}\n")  # Latin-1
    assert "is not UTF-8 text: byte 0xe9 on line 1" in _keys(path)["file"]


def _write(tmp_path, d: dict, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_echoed_input_is_cut(tmp_path):
    path = _write(tmp_path, {**BASE, "train": {"epochs": "9" * 100_000 + "x"}, "method": {"name": "m" * 50_000}})
    errors = _keys(path)
    assert all(len(k) + len(m) < 3000 for k, m in errors.items()), {k: len(m) for k, m in errors.items()}
    assert "train.epochs" in errors and "method.name" in errors


def test_non_finite_absurd_and_boolean_numbers_are_refused_with_their_key(tmp_path):
    run = {**BASE, "seed": 1.0e23, "train": {"lr": float("inf"), "epochs": True, "weight_decay": float("nan")}}
    errors = _keys(_write(tmp_path, run))
    assert "finite" in errors["train.lr"] and "finite" in errors["train.weight_decay"]
    assert "not a boolean" in errors["train.epochs"] and "seed" in errors
    errors = _keys(_write(tmp_path, BASE), ["train.epochs=1e10", "seed=1e23", "train.lr=.nan"])
    assert set(errors) == {"--set train.epochs=1e10", "--set seed=1e23", "--set train.lr=.nan"}, errors
    errors = _keys(_write(tmp_path, {**BASE, "method": {"name": "mbt", "fusion_layer": True}}))
    assert "not a boolean" in errors["method.fusion_layer"]
    sweep = {**BASE, "search": {"train.lr": {"grid": [1e-3, float("inf")]}}}
    assert "finite" in " ".join(_keys(_write(tmp_path, sweep)).values())


def test_an_empty_variant_list_is_refused(tmp_path):
    sweep = {**BASE, "search": {"variants": [{"method.name": ["late"]}, {"method.name": "mbt", "seed": []}]}}
    errors = _keys(_write(tmp_path, sweep))
    assert "empty list" in errors["search.variants[1].seed"]


def test_every_missing_include_is_named(tmp_path):
    path = _write(tmp_path, {"include": ["one.yaml", "two.yaml"], **BASE})
    text = str(pytest.raises(ConfigError, load_config, path).value)
    assert "one.yaml" in text and "two.yaml" in text


def test_an_engine_error_is_reported_with_top_level_errors(tmp_path):
    run = {**BASE, "seed": -1, "bogus": 1, "engine": {"name": "deepspeed", "zero_stage": 7}}
    errors = _keys(_write(tmp_path, run))
    assert {"seed", "bogus", "engine.zero_stage"} <= set(errors), errors


def test_validate_catches_an_unknown_checkpoint_suffix_and_a_missing_dataset_root(tmp_path, capsys):
    ckpt = tmp_path / "vit.ckpt"
    ckpt.write_bytes(b"\0")
    run = {"name": "t", "dataset": {"name": "ave", "root": str(tmp_path / "nowhere")}, "method": {"name": "mbt"},
           "backbone": {"name": "tiny", "checkpoint": str(ckpt)}}  # fmt: skip
    assert main(["validate", str(_write(tmp_path, run))]) == 2
    err = capsys.readouterr().err
    assert "backbone.checkpoint: 'vit.ckpt' has an unknown suffix; use .safetensors" in err
    assert "dataset.root: " in err and "nowhere' is not a folder" in err


def test_a_sweep_over_the_confirmation_threshold_needs_yes(tmp_path, capsys):
    sweep = {**BASE, "search": {"seed": {"grid": list(range(1001))}}}
    path = _write(tmp_path, sweep)
    assert main(["sweep", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err
    assert "1,001 trials (more than 1,000)" in err and "pass --yes to start it" in err
    assert not (tmp_path / "m.db").exists()  # nothing was started
