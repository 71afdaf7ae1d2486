"""``harness prepare DATASET --root DIR``: decode a dataset's media once into the prepared cache."""

from __future__ import annotations

from harness.cli.common import add_command, add_set


def add(sub):
    p = add_command(
        sub,
        "prepare",
        "decode a dataset's media once into a sharded cache (resumable) and write its manifest.json",
        "  harness prepare ave --root /data/AVE_Dataset --workers 8\n"
        "  harness prepare vggsound --root /data/vggsound --cache /fast/cache --strict\n"
        "  harness prepare ave --root /tmp/ave --set frames=4 --set image_size=32 --set resize=37\n"
        "  harness prepare vggsound --root /data/vggsound --dry-run      # bytes per clip, projected size",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset card (`harness ls datasets`)")
    p.add_argument("--root", required=True, metavar="DIR", help="folder of the annotation files and media")
    p.add_argument("--cache", default=None, metavar="DIR", help="prepared-cache folder (default: under $HARNESS_CACHE)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="decoding processes (0: this process)")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt file, naming it")
    p.add_argument("--dry-run", action="store_true", help="only print the bytes per clip and the projected size")
    add_set(p)
    return p


def run(args) -> int:
    from harness.run.prepare import prepare_dataset

    return prepare_dataset(args.dataset, args.root, args.cache, args.workers, args.strict, args.set, args.dry_run)
