"""Stopping on SIGINT (Ctrl-C) and SIGTERM: the first signal stops the work at a safe point, a second at once.

``harness run`` and ``harness sweep`` do their work inside :func:`interrupts`. Without a graceful stop (``harness
run``; a sweep before Ray Tune runs), the first signal raises :class:`Interrupted` where the main thread is, which
ends the run KILLED with its last epoch's checkpoint kept. During a sweep's ``Tuner.fit`` the driver sets
:attr:`Interrupts.graceful`: the first signal asks Tune to stop (it saves the experiment state and stops the running
trials), and only a second one raises. Exit statuses follow the shell's convention, 128 + the signal's number: 130
for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupts:
    """What :func:`interrupts` yields: ``first`` is the number of the first signal (None until one came).

    ``graceful``: called with the signal number on the first signal; returning True means it has arranged for the
    work to stop at its next safe point, so nothing is raised. None (or False) raises :class:`Interrupted` at once.
    """

    def __init__(self):
        self.first: int | None = None
        self.graceful: Callable[[int], bool] | None = None

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces the SIGTERM handler with its own, which kills the process."""
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.first is None:
            self.first = signum
            if self.graceful is not None and self.graceful(signum):
                name = signal.Signals(signum).name
                print(f"\n{name}: stopping at the next safe point (a sweep: after the running trials are saved); "
                      "send it again to stop at once", file=sys.stderr, flush=True)  # fmt: skip
                return
        raise Interrupted(self.first)


@contextmanager
def interrupts() -> Iterator[Interrupts]:
    """Handle SIGINT and SIGTERM in the block (main thread only; elsewhere nothing is installed); restores the
    previous handlers after it."""
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    state.install()
    try:
        yield state
    except KeyboardInterrupt as e:
        # Raised by our handler inside a C call, it may come back as a plain KeyboardInterrupt (Ray's `ray.wait`)
        if isinstance(e, Interrupted) or state.first is None:
            raise
        raise Interrupted(state.first) from e
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
