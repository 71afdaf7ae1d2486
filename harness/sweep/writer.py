"""The sweep driver's MLflow write queue: one thread, writes in order, retried until the store takes them.

Tune calls its callbacks from the loop that also starts the next trial, so a write that waits on the store would
delay every later trial; :class:`StoreWriter` applies them in a thread of its own. A write is a plain tuple (an
*op*: its name and arguments), so that what is still queued can be pickled with Tune's experiment state: that is
the sweep's journal (``harness.sweep.callback``). Nothing queued is dropped because the store failed:

- a write that fails is retried with exponential backoff (0.5 s, doubling up to 30 s) for as long as it takes, the
  later ones waiting behind it in order, while the trials go on training;
- :meth:`StoreWriter.drain` waits until the queue is empty, or until the write at its head has failed for
  ``patience`` seconds; it returns what is still queued (the *backlog*), which the caller keeps (in the snapshot)
  and hands back with :meth:`StoreWriter.resubmit` on the next start. Writes are idempotent (a run is found by its
  trial id, a (metric, step) is logged once), so a write that landed after the snapshot may safely run again;
- a write the store refuses for good (MLflow's ``INVALID_PARAMETER_VALUE``, ``BAD_REQUEST``, ...: retrying cannot
  help) is not retried: it is printed at once and kept in :attr:`StoreWriter.refused`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable

# MLflow error codes of a request that is wrong in itself; anything else (a full disk: TEMPORARILY_UNAVAILABLE, a
# lost connection, an OSError from the artifact store) may pass on a later try.
PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
                       "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED"})  # fmt: skip


def permanent(error: BaseException) -> bool:
    """Whether retrying ``error`` cannot help (MLflow refused the write itself)."""
    return isinstance(error, LookupError) or getattr(error, "error_code", None) in PERMANENT


class StoreWriter:
    """Applies ops with ``apply(op)`` in one daemon thread, in the order they were submitted (see the module doc).

    Args:
        apply: does one write; raises when the store fails.
        first_delay, max_delay: the backoff between tries of a failing write, in seconds.
    """

    def __init__(self, apply: Callable[[tuple], None], first_delay: float = 0.5, max_delay: float = 30.0):
        self._apply, self.first_delay, self.max_delay = apply, first_delay, max_delay
        self._ops: deque[tuple] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None  # when the write at the head first failed
        self.error: BaseException | None = None  # the last failure of the store, None once a write lands again
        self.refused: list[tuple[tuple, str]] = []  # (op, error) the store refused for good
        self.retried = 0  # failed tries, in all

    def submit(self, op: tuple) -> None:
        with self._cond:
            self._ops.append(op)
            self._start()
            self._cond.notify_all()

    def resubmit(self, ops: list[tuple]) -> None:
        """Put ``ops`` (a backlog from :meth:`drain`) in front of anything queued."""
        with self._cond:
            self._ops.extendleft(reversed(ops))
            self._start()
            self._cond.notify_all()

    def pending(self) -> list[tuple]:
        with self._cond:
            return list(self._ops)

    def drain(self, patience: float, timeout: float | None = None) -> list[tuple]:
        """Wait until every queued op is applied; returns ``[]``, or the ops still queued once the head one has
        failed for ``patience`` seconds (the store is down: the caller keeps them) or after ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._ops:
                now, since = time.monotonic(), self._failing_since
                if (since is not None and now - since >= patience) or (end is not None and now >= end):
                    return list(self._ops)
                self._cond.wait(0.05 if since is not None or end is not None else 0.2)
            return []

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops:
                    self._cond.wait()
                op = self._ops[0]  # stays queued (and in any snapshot) until it has landed
            self._apply_with_retries(op)
            with self._cond:
                if self._ops and self._ops[0] is op:
                    self._ops.popleft()
                self._cond.notify_all()

    def _apply_with_retries(self, op: tuple) -> None:
        delay = self.first_delay
        while True:
            try:
                self._apply(op)
            except Exception as e:  # noqa: BLE001 - any failure of the store is retried unless it is permanent
                if permanent(e):
                    self.refused.append((op, f"{type(e).__name__}: {e}"))
                    print(f"  MLflow refused a write ({op[0]}): {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    return
                with self._cond:
                    self.retried += 1
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        why = f"{type(e).__name__}: {str(e)[:300]}"
                        print(f"  MLflow write failed ({why}); retrying with backoff, {len(self._ops)} writes queued; "
                              "the trials go on", file=sys.stderr, flush=True)  # fmt: skip
                    self.error = e
                    self._cond.notify_all()
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            with self._cond:
                if self._failing_since is not None:
                    print(f"  MLflow store writes again after {self.retried} failed tries", file=sys.stderr, flush=True)
                self._failing_since, self.error = None, None
            return
