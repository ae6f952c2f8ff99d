"""Graceful stops for training loops: the first SIGINT/SIGTERM asks the loop to stop after the current step.

    with GracefulStop() as stop:
        for step in ...:
            state = train_step(state)
            if stop.requested:
                save_checkpoint(state)      # the loop decides what "stop cleanly" means
                break
    if stop.requested: ... exit with stop.exit_code

A second signal while the loop is finishing raises KeyboardInterrupt (the user insists). The previous
handlers are restored on exit. Outside the main thread (where Python cannot install handlers) it is inert.
"""

import signal
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self, signals=_SIGNALS):
        self.signals = tuple(signals)
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), 0 when no signal arrived."""
        return 0 if self.signum is None else 128 + int(self.signum)

    @property
    def name(self):
        return None if self.signum is None else signal.Signals(self.signum).name

    def request(self, signum=signal.SIGINT):
        """Ask for a stop as a signal would (used by multi-process runs to agree on stopping)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        return False
