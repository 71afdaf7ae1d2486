"""``harness synth``: a synthetic dataset written as real MP4 files and annotation files of a dataset's layout."""

from __future__ import annotations

from pathlib import Path

from harness.cli.common import add_command
from harness.data.synth_media import FRAME_LAYOUTS, LAYOUTS


def add(sub):
    p = add_command(
        sub,
        "synth",
        "write a synthetic dataset as real MP4 files (H.264 + AAC) and annotation files of a dataset's layout",
        "  harness synth --out /tmp/ave --layout ave --clips 20\n  harness prepare ave --root /tmp/ave",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--layout",
        required=True,
        choices=(*LAYOUTS, *FRAME_LAYOUTS),
        help="whose file names and annotation format to write",
    )
    p.add_argument("--clips", type=int, default=12, metavar="N", help="clips to write (default 12)")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    return p


def run(args) -> int:
    from harness.data.synth_media import synth

    info = synth(Path(args.out), args.layout, args.clips, args.seed)
    print(f"wrote {info['clips']} clips ({args.layout} layout: {', '.join(info['files'])}) under {args.out}")
    card = {"avsbench": "avsbench_s4"}.get(args.layout, args.layout)  # the dataset card that reads the layout
    print(f"next: harness prepare {card} --root {args.out}")
    return 0
