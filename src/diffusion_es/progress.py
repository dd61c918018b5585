"""Progress of long work: the library reports it, whoever asked decides whether and how to show it.

Library code says what it is about to do and what it did: ``with task(n): ... advance(k)``. The caller (the
CLI's progress bars) installs a :class:`Meter` with ``with tracking(meter):``; without one, reporting costs a
context-variable lookup and shows nothing. So the sampling front end, calibration, measurement and feature
extraction feed one bar per command, with an ETA inside every long part (e.g. a calibration inside ``repro``),
and library users never see a bar they did not ask for.

* :func:`task` ``(expected)``: announces ``expected`` units of work (samples, images). Only the outermost task
  counts (a calibration that samples through :func:`diffusion_es.samplers.sample` announces its whole search once,
  not each seed set again). On exit the task's share of the total becomes what was actually done, so an estimate
  that was too high or too low (an adaptive search) leaves no gap in the bar.
* :func:`advance` ``(n)``: ``n`` more units done.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Optional

__all__ = ["Meter", "tracking", "task", "advance", "active", "bar_interval", "LOG_INTERVAL"]

# seconds between progress-bar refreshes where stderr is not a terminal (a log file, a batch job's output): a
# terminal redraws the bar in place, a file keeps every refresh, so there it is refreshed twice a minute
LOG_INTERVAL = 30.0


def bar_interval(stream, terminal: float = 0.1) -> float:
    """The least time between two refreshes of a progress bar drawn on ``stream``: ``terminal`` on a terminal,
    :data:`LOG_INTERVAL` elsewhere (every refresh of a bar written to a file stays in it)."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        tty = False
    return terminal if tty else LOG_INTERVAL


_METER: contextvars.ContextVar = contextvars.ContextVar("diffusion_es_progress", default=None)


class Meter:
    """Counts announced (``total``) and finished (``done``) work; calls ``on_change(done, total)`` after each
    change (e.g. to update a tqdm bar)."""

    def __init__(self, on_change: Optional[Callable[[int, int], None]] = None):
        self.total, self.done, self.depth = 0, 0, 0
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.done, self.total)

    def expect(self, n: int) -> None:
        self.total += int(n)
        self._changed()

    def advance(self, n: int) -> None:
        self.done += int(n)
        self.total = max(self.total, self.done)  # more than announced (or nothing announced): never above 100 %
        self._changed()


@contextlib.contextmanager
def tracking(meter: Meter):
    """Report the work done inside the block to ``meter``."""
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def active() -> bool:
    """Whether anyone is listening (library code may skip computing an estimate otherwise)."""
    return _METER.get() is not None


@contextlib.contextmanager
def task(expected: int):
    """Announce ``expected`` units of work for the block (outermost task only); settle the total on exit."""
    m = _METER.get()
    if m is None:
        yield
        return
    outer = m.depth == 0
    base, start = m.total, m.done
    if outer:
        m.expect(max(0, int(expected)))
    m.depth += 1
    try:
        yield
    finally:
        m.depth -= 1
        if outer:  # the task's share of the total: what it did
            m.total = base + (m.done - start)
            m._changed()


def advance(n: int) -> None:
    """``n`` more units of work done."""
    m = _METER.get()
    if m is not None:
        m.advance(n)
