"""Registry: lazy targets, did-you-mean errors, entry-point plug-ins, dataset cards, the built-in table."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import registry
from harness.registry import CardRegistry, DuplicateNameError, Registry, UnknownNameError


def _dist(site, name: str, group: str, entries: dict[str, str]) -> None:
    """A real (minimal) installed distribution: dist-info with METADATA and entry_points.txt."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def test_targets_resolve_lazily_and_are_cached(tmp_path, monkeypatch):
    (tmp_path / "lazy_target_mod.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing")
    reg.register("x", "lazy_target_mod:Thing", "a thing")
    assert reg.names() == ["x"] and "x" in reg and reg.describe("x") == "a thing"
    assert "lazy_target_mod" not in sys.modules
    obj = reg.get("x")
    assert obj.__name__ == "Thing" and "lazy_target_mod" in sys.modules
    monkeypatch.delitem(sys.modules, "lazy_target_mod")
    assert reg.get("x") is obj  # cached: no second import


def test_unknown_name_suggests_and_lists_valid_names():
    reg = Registry("method")
    for name in ("vanilla", "mbt", "late", "audio_only", "video_only"):
        reg.register(name, "json:dumps")
    with pytest.raises(UnknownNameError) as e:
        reg.get("mbtt")
    assert isinstance(e.value, KeyError)
    assert str(e.value) == (
        "unknown method 'mbtt' (did you mean 'mbt'?); valid methods: audio_only, late, mbt, vanilla, video_only"
    )
    assert (e.value.kind, e.value.name, e.value.suggestions) == ("method", "mbtt", ["mbt"])
    assert "did you mean" not in str(UnknownNameError("method", "zzz", reg.names()))


def test_duplicate_name_raises():
    reg = Registry("method")
    reg.register("mbt", "json:dumps")
    with pytest.raises(DuplicateNameError, match="'mbt' is registered twice"):
        reg.register("mbt", "json:loads")


def test_bad_target_names_the_expected_form():
    reg = Registry("method")
    reg.register("m", "json.dumps")
    with pytest.raises(ValueError, match="package.module:attr"):
        reg.get("m")


def test_entry_point_plugin_is_loaded_lazily(tmp_path, monkeypatch):
    documented = 'import json\n\n\nclass Gmu:\n    """Gated fusion of two streams.\n\n    More."""\n'
    (tmp_path / "plug_mod_a.py").write_text("VALUE = 42\n\n" + documented)
    _dist(tmp_path, "plugdist", "harness_test.things", {"answer": "plug_mod_a:VALUE", "gmu": "plug_mod_a:Gmu"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", "harness_test.things")
    reg.register("builtin", "json:dumps")
    assert reg.names() == ["answer", "builtin", "gmu"]
    assert reg.origin("answer") == "plug-in from plugdist" and reg.describe("answer") == "(plug-in from plugdist)"
    assert reg.describe("gmu") == "Gated fusion of two streams. (plug-in from plugdist)"  # its docstring's first line
    assert "plug_mod_a" not in sys.modules  # read from the source, not imported
    assert reg.get("answer") == 42


def test_plugin_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    _dist(tmp_path, "shadowdist", "harness_test.shadow", {"mbt": "json:loads"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", "harness_test.shadow")
    reg.register("mbt", "json:dumps")
    with pytest.raises(DuplicateNameError, match="shadowdist.*clashes with the built-in"):
        reg.names()


def test_dataset_cards_from_env_folder(tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "a.yaml").write_text("name: alpha\nformat: synthetic\ndescription: first card\nparams: {n: 1}\n")
    monkeypatch.setenv("HARNESS_DATASETS_DIR", str(cards))
    reg = CardRegistry("dataset")
    assert reg.names() == ["alpha"] and reg.describe("alpha") == "first card"
    card = reg.get("alpha")
    assert card["format"] == "synthetic" and card["params"] == {"n": 1} and card["path"] == str(cards / "a.yaml")
    (cards / "b.yaml").write_text("name: beta\nformat: synthetic\ndescription: second\n")
    with pytest.raises(ValueError, match="lacks required keys: params"):
        reg.names()
    (cards / "b.yaml").write_text("name: alpha\nformat: synthetic\ndescription: second\nparams: {}\n")
    with pytest.raises(DuplicateNameError, match="'alpha'"):
        reg.names()


def _builtins(reg) -> list[str]:
    return [n for n in reg.names() if reg.origin(n) == "built-in"]  # installed plug-ins are someone else's


def test_builtin_entries_resolve_to_their_base_and_are_described():
    for reg in (registry.METHODS, registry.TASKS, registry.BACKBONES, registry.ENGINES, registry.FORMATS):
        assert _builtins(reg), f"no built-in {reg.kind}"
        for name in _builtins(reg):
            assert reg.describe(name), f"{reg.kind} {name!r} has no description"
            reg.get(name)  # imports, and checks the registry's base class


def test_every_method_and_task_module_is_registered():
    """One file per method (``methods/*.py``) and per task (``harness/tasks/*.py``), each registered."""
    root = Path(registry.__file__).resolve().parents[1]
    methods = {f"methods.{p.stem}" for p in (root / "methods").glob("*.py") if p.stem != "__init__"}
    assert {registry.METHODS.get(n).__module__ for n in _builtins(registry.METHODS)} == methods
    tasks = {f"harness.tasks.{p.stem}" for p in (root / "harness" / "tasks").glob("*.py")} - {
        "harness.tasks.__init__", "harness.tasks.common"}  # fmt: skip
    assert {registry.TASKS.get(n).__module__ for n in _builtins(registry.TASKS)} == tasks


def test_a_registered_target_outside_the_base_class_is_refused(tmp_path, monkeypatch):
    (tmp_path / "not_a_method.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", base="harness.api:FusionMethod")
    reg.register("thing", "not_a_method:Thing", "not a method")
    with pytest.raises(TypeError, match=r"method 'thing' \(built-in, not_a_method:Thing\) must be a subclass of "
                                        r"harness.api.FusionMethod"):  # fmt: skip
        reg.get("thing")


def test_listing_does_not_import_targets():
    code = textwrap.dedent("""
        import sys
        from harness import registry
        for reg in (registry.METHODS, registry.TASKS, registry.BACKBONES, registry.ENGINES, registry.FORMATS):
            [reg.describe(n) for n in reg.names()]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "methods", "pydantic", "ray"))
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", registry.METHODS.names())
def test_builtin_methods_resolve_with_a_config(name):
    cls = registry.METHODS.get(name)
    assert cls.Config.model_fields["name"].description


@pytest.mark.parametrize("name", registry.BACKBONES.names())
def test_builtin_backbones_validate(name):
    from harness.models.backbones import BackboneConfig

    assert BackboneConfig(**registry.BACKBONES.get(name)()).name == name


@pytest.mark.parametrize(("reg", "name"), [(registry.TASKS, "classification"), (registry.FORMATS, "synthetic")])
def test_builtin_configurable_entries_resolve(reg, name):
    assert reg.get(name).Config.model_fields  # fails until harness.tasks / SyntheticDataset land
