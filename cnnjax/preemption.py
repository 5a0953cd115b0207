"""Preemption: SIGTERM (schedulers, Kubernetes, cloud preemption) and SIGINT (Ctrl-C) stop a run cleanly.

Within :func:`handling`, once the training loop has started (:func:`start_polling`), the first such signal only
sets a flag; the loop polls :func:`requested` after each step, writes a checkpoint, marks ``results.json``
``status: interrupted`` and raises :class:`Interrupted`. A second signal, or one before the loop started (loading
data, compiling: there is nothing new to save), raises ``KeyboardInterrupt`` at once, except within :func:`checkpoint_write`: a checkpoint being written is finished
first (a fraction of a second for the zoo), so a stop never leaves orbax's writer cut half-way. In a multi-process run no handler is installed: JAX's preemption
service (started by ``jax.distributed.initialize``) receives SIGTERM, and :func:`requested` asks it whether every
process has reached the agreed step, so all processes checkpoint the same step (Ctrl-C stops them at once).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the signals received within the outermost handling()
_depth = [0]
_polling = [False]
_writing = [0]  # nesting depth of checkpoint_write()
_stop_after_write = [False]


class Interrupted(Exception):
    """A run stopped by a signal after writing its checkpoint. ``exit_code``: 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _handler(signum, frame) -> None:
    if _received or not _polling[0]:
        if _writing[0]:
            _stop_after_write[0] = True
            return
        raise KeyboardInterrupt
    _received.append(signum)
    from cnnjax import metrics

    metrics.log_line(
        f"{signal.Signals(signum).name} received: finishing the current step and writing a checkpoint "
        "(send it again to stop at once)"
    )


def _multi_process() -> bool:
    return jax.process_count() > 1


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Installs the handlers (main thread only; nested uses share the outermost one's flag) and restores the
    previous ones on exit."""
    if threading.current_thread() is not threading.main_thread() or _multi_process():
        yield  # processes must stop at the same step: JAX's preemption service decides (see requested)
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    if _depth[0] == 0:
        _received.clear()
        _polling[0] = False
        _stop_after_write[0] = False
    _depth[0] += 1
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _depth[0] -= 1
        _polling[0] = _polling[0] and _depth[0] > 0
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def checkpoint_write() -> Iterator[None]:
    """A signal that would stop the run at once waits for this block to finish, then raises ``KeyboardInterrupt``."""
    _writing[0] += 1
    try:
        yield
    finally:
        _writing[0] -= 1
    if _writing[0] == 0 and _stop_after_write[0]:
        _stop_after_write[0] = False
        raise KeyboardInterrupt


def start_polling() -> None:
    """From now on the loop polls :func:`requested`: a first signal waits for the next step's checkpoint."""
    _polling[0] = True


def received() -> int | None:
    """The number of the first signal received within :func:`handling`, or None."""
    return _received[0] if _received else None


def requested(step: int) -> int | None:
    """The signal that asked the training loop to stop (its number), or None. ``step``: the step just dispatched;
    every process of a multi-process run calls this at every step."""
    if _received:
        return _received[0]
    if _multi_process():
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            return int(signal.SIGTERM)
    return None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
