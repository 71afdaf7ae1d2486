"""``harness ui``: MLflow's UI on the harness's tracking store, bound to 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

from harness.cli.common import add_command, add_tracking


def add(sub):
    p = add_command(sub, "ui", "open the MLflow UI on the harness's tracking store", "  harness ui --port 5000")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add_tracking(p)
    return p


def run(args) -> int:
    from harness.tracking import serve_ui

    return serve_ui(args.tracking_uri, args.host, args.port)
