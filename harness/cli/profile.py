"""``harness profile``: params, GFLOPs and tokens of a method + head at any size, on the meta device."""

from __future__ import annotations

from harness.cli.common import add_command, add_set


def add(sub):
    p = add_command(
        sub,
        "profile",
        "params, forward GFLOPs/GMACs of one clip and tokens of a method + head at any size (meta device, no data)",
        "  harness profile --preset mbt_b16_audioset\n"
        "  harness profile --preset vanilla_b16_audioset --set method.fusion_layer=0 --json\n"
        "  harness profile run.yaml --set backbone.name=vit_l16",
    )
    p.add_argument("file", nargs="?", default=None, metavar="FILE", help="run YAML (or a file with an input: section)")
    p.add_argument("--preset", default=None, metavar="NAME", help="a shipped preset (harness/run/profiles/NAME.yaml)")
    add_set(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def run(args) -> int:
    from harness.run.profile import profile_command

    return profile_command(args.file, args.preset, args.set, args.json)
