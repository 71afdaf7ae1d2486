"""The ``harness`` command line: ls, validate, run, sweep, report, profile, ui, prepare, synth.

Heavy libraries (torch, ray, mlflow, pandas) are imported inside the handlers, so ``harness ls`` is instant and
``harness validate`` never starts Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import __version__

KINDS = ("methods", "tasks", "datasets", "backbones", "engines", "formats", "sweeps")

EPILOG = """\
examples:
  harness ls methods
  harness validate sweeps/fusion_layer.yaml --set train.epochs=1
  harness run sweeps/quickstart.yaml --set method.name=mbt --set method.fusion_layer=2
  harness sweep sweeps/fusion_layer.yaml --set tune.num_samples=3
  harness sweep sweeps/fusion_layer.yaml --address auto --storage /shared/ray_results
  harness report --sweep fusion_layer --out reports/fusion_layer.md
  harness profile --preset mbt_b16_audioset
  harness ui --port 5000

Keys are spelled the same in YAML, --set and MLflow params (method.fusion_layer, train.lr, seed, ...).
Configuration errors are all reported at once, and the command exits with status 2.
"""


def sweeps_dir() -> Path:
    """``$HARNESS_SWEEPS_DIR`` or ``sweeps/`` in the repository root."""
    env = os.environ.get("HARNESS_SWEEPS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "sweeps"


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
        if line.strip():
            break
    return ""


def _cmd_ls(args: argparse.Namespace) -> int:
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


def _cmd_validate(args: argparse.Namespace) -> int:
    from harness.config import ConfigError, RunSpec, load_config

    status = 0
    for path in args.files:
        try:
            spec = load_config(path, args.set)
        except ConfigError as e:
            _print_config_error(path, e)
            status = 2
            continue
        kind = "run" if isinstance(spec, RunSpec) else f"sweep with {spec.num_trials} trials"
        print(f"{path}: ok ({kind})")
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.trial import cli_run

    return cli_run(args.file, args.set, args.tracking_uri, args.resume)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweep import cli_sweep

    return cli_sweep(args.file, args.set, args.tracking_uri, args.storage, args.address, args.resume)


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report import cli_report

    return cli_report(args.sweep, args.spec, args.out, args.format, args.tracking_uri)


def _cmd_profile(args: argparse.Namespace) -> int:
    from harness.profile import cli_profile

    return cli_profile(args.file, args.preset, args.set, args.json)


def _cmd_ui(args: argparse.Namespace) -> int:
    from harness.tracking import cli_ui

    return cli_ui(args.tracking_uri, args.host, args.port)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from harness.data.prepare import cli_prepare

    return cli_prepare(args.dataset, args.root, args.cache, args.workers, args.strict, args.set)


def _cmd_synth(args: argparse.Namespace) -> int:
    from harness.data.prepare import cli_synth

    return cli_synth(args.out, args.layout, args.clips, args.seed)


def _print_config_error(path: str | None, err: Exception) -> None:
    errors = getattr(err, "errors", [])
    n = len(errors)
    print(f"error: {path or 'the configuration'} has {n} problem{'s' if n != 1 else ''}:", file=sys.stderr)
    for key, msg in errors:
        print(f"  {key}: {msg}" if key else f"  {msg}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The ``harness`` argument parser (exposed for the docs and the tests)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compare audio-visual fusion methods fairly: one data pipeline, one training loop, one "
        "accounting of cost; sweeps on Ray, results in MLflow.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"examples:\n{examples}", formatter_class=fmt)
        return p

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (dotted, as in YAML; value parsed as YAML); repeatable",
        )

    def add_tracking(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else local)"
        )

    p = add("ls", "list registered names with a one-line description", "  harness ls methods\n  harness ls sweeps")
    p.add_argument("kind", choices=KINDS, help="what to list")
    p.set_defaults(func=_cmd_ls)

    p = add(
        "validate",
        "check run/sweep files (every problem at once; exit 2 on errors) without training",
        "  harness validate sweeps/fusion_layer.yaml\n  harness validate run.yaml --set method.fusion_layer=13",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="run or sweep YAML file(s)")
    add_set(p)
    p.set_defaults(func=_cmd_validate)

    p = add(
        "run",
        "train and evaluate one configuration (no Ray), logging to MLflow",
        "  harness run sweeps/quickstart.yaml --set method.name=late --set train.epochs=2",
    )
    p.add_argument("file", metavar="FILE", help="run YAML file (a sweep file runs its base configuration)")
    add_set(p)
    add_tracking(p)
    resume = "continue the interrupted run of FILE (same --set) from its last epoch, in the same MLflow run"
    p.add_argument("--resume", action="store_true", help=resume)
    p.set_defaults(func=_cmd_run)

    p = add(
        "sweep",
        "run every trial of a sweep file with Ray Tune, one MLflow child run per trial",
        "  harness sweep sweeps/fusion_layer.yaml\n"
        "  harness sweep sweeps/fusion_layer.yaml --address auto --storage /shared/ray_results",
    )
    p.add_argument("file", metavar="FILE", help="sweep YAML file")
    add_set(p)
    add_tracking(p)
    p.add_argument("--storage", default=None, metavar="DIR", help="Ray Tune storage path (shared on a cluster)")
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster address ('auto' = running cluster)")
    resume = "finish the unfinished trials of the last run of FILE (same --set) in their MLflow runs; none rerun"
    p.add_argument("--resume", action="store_true", help=resume)
    p.set_defaults(func=_cmd_sweep)

    p = add(
        "report",
        "build comparison tables from the FINISHED runs in MLflow (mean, std, CI over seeds)",
        "  harness report --sweep fusion_layer --out reports/fusion_layer.md\n"
        "  harness report --spec reports/table2.yaml --out reports/table2.csv --format csv\n"
        "  harness report --out reports/table2.html      # one page: table + figure, no external files",
    )
    p.add_argument("--sweep", default=None, metavar="NAME", help="sweep (MLflow experiment) to report")
    p.add_argument("--spec", default=None, metavar="FILE", help="report spec YAML (rows, columns, metrics)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file")
    p.add_argument(
        "--format",
        choices=("md", "csv", "tex", "html"),
        default=None,
        help="md, csv, tex (LaTeX tabular) or html (one self-contained page); default: the --out suffix",
    )
    add_tracking(p)
    p.set_defaults(func=_cmd_report)

    p = add(
        "profile",
        "params, forward GFLOPs/GMACs of one clip and tokens of a method + head at any size (meta device, no data)",
        "  harness profile --preset mbt_b16_audioset\n"
        "  harness profile --preset vanilla_b16_audioset --set method.fusion_layer=0 --json\n"
        "  harness profile sweeps/run.yaml --set backbone.name=vit_l16",
    )
    p.add_argument("file", nargs="?", default=None, metavar="FILE", help="run YAML (or a file with an input: section)")
    p.add_argument("--preset", default=None, metavar="NAME", help="a shipped preset (harness/profiles/NAME.yaml)")
    add_set(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_cmd_profile)

    p = add("ui", "open the MLflow UI on the harness's tracking store", "  harness ui --port 5000")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add_tracking(p)
    p.set_defaults(func=_cmd_ui)

    p = add(
        "prepare",
        "decode a dataset's media once into a sharded cache (resumable) and write its manifest.json",
        "  harness prepare ave --root /data/AVE_Dataset --workers 8\n"
        "  harness prepare vggsound --root /data/vggsound --cache /fast/cache --strict\n"
        "  harness prepare ave --root /tmp/ave --set frames=4 --set image_size=32",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset card (`harness ls datasets`)")
    p.add_argument("--root", required=True, metavar="DIR", help="folder of the annotation files and media")
    p.add_argument("--cache", default=None, metavar="DIR", help="prepared-cache folder (default: under $HARNESS_CACHE)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="decoding processes (0: this process)")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt file, naming it")
    add_set(p)
    p.set_defaults(func=_cmd_prepare)

    p = add(
        "synth",
        "write a synthetic dataset as real MP4 files (H.264 + AAC) and annotation files of a dataset's layout",
        "  harness synth --out /tmp/ave --layout ave --clips 20\n  harness prepare ave --root /tmp/ave",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--layout", required=True, choices=("vggsound", "audioset", "ave", "kinetics_sounds",
                   "epic_kitchens_100"), help="whose file names and annotation format to write")  # fmt: skip
    p.add_argument("--clips", type=int, default=12, metavar="N", help="clips to write (default 12)")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.set_defaults(func=_cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harness`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        config = sys.modules.get("harness.config")  # a ConfigError implies it is imported; `ls` stays light
        if config is None or not isinstance(e, config.ConfigError):
            raise
        _print_config_error(getattr(args, "file", None) or getattr(args, "spec", None), e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
