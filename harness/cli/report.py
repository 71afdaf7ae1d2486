"""``harness report``: comparison tables and figures from the FINISHED runs in MLflow (``harness.report``)."""

from __future__ import annotations

from harness.cli.common import add_command, add_tracking


def add(sub):
    p = add_command(
        sub,
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
    p.add_argument("--overwrite", action="store_true", help="replace a report of another sweep invocation at --out")
    return p


def run(args) -> int:
    from harness.report.build import report_file

    return report_file(args.sweep, args.spec, args.out, args.format, args.tracking_uri, args.overwrite)
