"""``harness ls KIND``: registered names with a one-line description."""

from __future__ import annotations

import os
from pathlib import Path

from harness.cli.common import add_command

KINDS = ("methods", "tasks", "datasets", "backbones", "engines", "formats", "sweeps")


def sweeps_dir() -> Path:
    """``$HARNESS_SWEEPS_DIR`` or ``sweeps/`` in the repository root."""
    env = os.environ.get("HARNESS_SWEEPS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "sweeps"


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
        if line.strip():
            break
    return ""


def add(sub):
    p = add_command(
        sub, "ls", "list registered names with a one-line description", "  harness ls methods\n  harness ls sweeps"
    )
    p.add_argument("kind", choices=KINDS, help="what to list")
    return p


def run(args) -> int:
    if args.kind == "sweeps":
        folder = sweeps_dir()
        rows = [(f.stem, _first_comment(f)) for f in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []
    else:
        from harness import registry

        reg = getattr(registry, args.kind.upper())
        rows = [(name, reg.describe(name)) for name in reg.names()]
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}".rstrip())
    return 0
