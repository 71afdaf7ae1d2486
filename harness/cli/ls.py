"""``harness ls KIND [NAME]``: registered names with a one-line description; with NAME, every key it takes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.cli.common import add_command

KINDS = ("methods", "tasks", "datasets", "backbones", "engines", "formats", "sweeps", "presets")


def sweeps_dir() -> Path:
    """``$HARNESS_SWEEPS_DIR`` or ``sweeps/`` in the repository root."""
    env = os.environ.get("HARNESS_SWEEPS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "sweeps"


def presets_dir() -> Path:
    """The shipped profile presets (``harness profile --preset NAME``)."""
    return Path(__file__).resolve().parents[1] / "run" / "profiles"


_ABBREVIATIONS = ("Fig", "Figs", "al", "e.g", "i.e", "vs", "cf", "Eq", "Tab", "approx")


def _first_comment(path: Path) -> str:
    """The first sentence of the file's opening comment block (it may span lines); command lines are skipped."""
    words = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text or words:
                break
            continue
        text = text.lstrip("#").strip()
        if not text or text.startswith("harness "):
            if words:
                break
            continue
        words.append(text)
    joined = " ".join(words)
    for m in re.finditer(r"\.(\s+(?=[A-Z(`])|$)", joined):
        word = re.split(r"[\s(]", joined[: m.start()])[-1]
        if word not in _ABBREVIATIONS and not re.fullmatch(r"[A-Z]", word):
            return joined[: m.start() + 1]
    return joined


def add(sub):
    p = add_command(
        sub,
        "ls",
        "list registered names with a one-line description; with NAME, every key it takes (default, description)",
        "  harness ls methods\n  harness ls methods mbt\n  harness ls datasets synthetic\n  harness ls sweeps\n"
        "  harness ls presets",
    )
    p.add_argument("kind", choices=KINDS, help="what to list")
    p.add_argument("name", nargs="?", default=None, help="one of them: show its keys (methods, tasks, datasets, "
                   "backbones, engines, formats)")  # fmt: skip
    return p


def _files(folder: Path) -> list[tuple[str, str]]:
    return [(f.stem, _first_comment(f)) for f in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []


def _fields(config, values: dict | None = None) -> list[tuple[str, str, str]]:
    """(key, default, description) of every field of a pydantic config class; ``values`` override the defaults
    (a card's or a preset's own values)."""
    from pydantic_core import PydanticUndefined

    out = []
    for key, field in config.model_fields.items():
        if values is not None and key in values:
            default = values[key]
        elif field.default is not PydanticUndefined:
            default = field.default
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = "(required)"
        shown = "null" if default is None else str(default.model_dump() if hasattr(default, "model_dump") else default)
        out.append((key, shown, field.description or ""))
    return out


def keys_of(kind: str, name: str) -> tuple[str, str, list[tuple[str, str, str]]]:
    """The section a ``kind`` NAME configures, a one-line description, and its keys (key, default, description)."""
    from harness import registry

    reg = getattr(registry, kind.upper())
    if kind == "datasets":
        card = reg.get(name)
        fmt = registry.FORMATS.get(card["format"])
        return "dataset", card.get("description", ""), _fields(fmt.Config, card.get("params", {}))
    if kind == "backbones":
        from harness.models.backbones import BackboneConfig

        return "backbone", reg.describe(name), _fields(BackboneConfig, reg.get(name)())
    section = {"methods": "method", "tasks": "task", "engines": "engine", "formats": "dataset"}[kind]
    return section, reg.describe(name), _fields(reg.get(name).Config)


def run(args) -> int:
    if args.name is not None and args.kind not in ("sweeps", "presets"):
        section, description, fields = keys_of(args.kind, args.name)
        print(f"{args.name}: {description}".rstrip(": "))
        width = max((len(f"{section}.{k}") for k, _, _ in fields), default=0)
        dwidth = min(24, max((len(d) for _, d, _ in fields), default=0))
        for key, default, text in fields:
            print(f"  {section + '.' + key:<{width}}  {default:<{dwidth}}  {text}".rstrip())
        return 0
    if args.kind in ("sweeps", "presets"):
        rows = _files(sweeps_dir() if args.kind == "sweeps" else presets_dir())
        if args.name is not None:
            rows = [r for r in rows if r[0] == args.name]
    else:
        from harness import registry

        reg = getattr(registry, args.kind.upper())
        rows = [(name, reg.describe(name)) for name in reg.names()]
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}".rstrip())
    return 0
