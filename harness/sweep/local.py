"""A sweep's local Ray instance: on the loopback interface only, and gone with the driver.

Ray resolves a local node's address to the machine's own (``127.0.0.1`` passed as ``_node_ip_address`` included), so
its GCS, raylet and workers listen on every interface. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the setting Ray
uses for single-machine platforms, the node is ``127.0.0.1`` and every socket it opens is bound there; Ray reads it
when it is first imported, so ``harness sweep`` sets it before that (:func:`loopback_only`). A driver that is killed
(SIGKILL) leaves Ray's agents running for half a minute or more; :func:`watch` starts a small process that ends
them as soon as the driver is gone. This module does not import Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_only() -> bool:
    """Set the environment that keeps a local Ray instance on 127.0.0.1; False if Ray was imported before (then
    the setting only applies to processes started later)."""
    os.environ.update(LOOPBACK_ENV)
    return "ray" not in sys.modules


# The watchdog: reads the driver's Ray pids on stdin; at EOF (the driver ended, however) it ends what of them (and
# their descendants) still runs: SIGTERM, then SIGKILL after 3 s. It also leaves once none of them runs any more.
_WATCHDOG = """
import select, sys, time
import psutil
procs = []
for line in sys.stdin:
    if not line.strip():
        break
    try:
        procs.append(psutil.Process(int(line)))
    except psutil.Error:
        pass
def alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
while any(alive(p) for p in procs):
    ready, _, _ = select.select([sys.stdin], [], [], 1.0)
    if ready and not sys.stdin.readline():
        group = {p.pid: p for p in procs if alive(p)}
        for p in list(group.values()):
            try:
                group.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
        for p in group.values():
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, rest = psutil.wait_procs(list(group.values()), timeout=3)
        for p in rest:
            try:
                p.kill()
            except psutil.Error:
                pass
        break
"""


def watch(pids: list[int]) -> subprocess.Popen | None:
    """Start the watchdog over ``pids`` (the local Ray processes this driver started); it holds the read end of a
    pipe only this process writes to, so it wakes when this process ends, even by SIGKILL."""
    if not pids:
        return None
    proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, close_fds=True)  # fmt: skip
    proc.stdin.write("".join(f"{p}\n" for p in pids) + "\n")
    proc.stdin.flush()  # left open: it closes when this process ends
    return proc


def ray_processes(before: set[int] = frozenset()) -> list[int]:
    """The pids of this process's descendants that belong to Ray (its binaries, or Python running Ray's modules),
    leaving out ``before`` (those there before ``ray.init``)."""
    import psutil

    pids = []
    for c in psutil.Process().children(recursive=True):
        try:
            if c.pid not in before and (c.name() in ("gcs_server", "raylet") or "ray" in " ".join(c.cmdline())):
                pids.append(c.pid)
        except psutil.Error:
            continue
    return pids
