"""``harness ui``: MLflow's UI on the harness's tracking store, bound to 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import ipaddress
import sys

from harness.cli.common import add_command, add_tracking

EXPOSES = ("every experiment, run, param, metric, tag and artifact of the store, to read and to change or delete: "
           "MLflow's UI has no login")  # fmt: skip


def add(sub):
    p = add_command(sub, "ui", "open the MLflow UI on the harness's tracking store", "  harness ui --port 5000")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-remote", action="store_true", help="bind a --host other than loopback, which shows "
                   "other machines " + EXPOSES)  # fmt: skip
    add_tracking(p)
    return p


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to


def run(args) -> int:
    from harness.tracking import serve_ui

    if not loopback(args.host):
        if not args.allow_remote:
            print(f"error: --host {args.host} would show anyone who can reach this machine {EXPOSES}. Keep the "
                  "default 127.0.0.1 (and use an SSH tunnel: ssh -L 5000:127.0.0.1:5000 HOST), or pass "
                  "--allow-remote on a trusted network", file=sys.stderr)  # fmt: skip
            return 2
        print(f"warning: --host {args.host} --allow-remote: this shows other machines {EXPOSES}", file=sys.stderr)
    return serve_ui(args.tracking_uri, args.host, args.port)
