"""A dependency-free progress bar for batch jobs (preparing data, predicting folders)."""

import sys
import time
from collections.abc import Iterable, Sized


def progress(items: Iterable, label: str, total: int | None = None, stream=None,
             min_interval: float = 0.2):
    """Yields `items`, drawing `label [#####-----] n/total` on stderr; one final line at the end.

    `total` defaults to len(items) where that is known.
    """
    stream = stream or sys.stderr
    if total is None and isinstance(items, Sized):
        try:
            total = len(items)
        except TypeError:  # E.g. a tf.data.Dataset of unknown length.
            total = None
    last = 0.0
    count = 0

    def draw(final=False):
        if total:
            filled = int(30 * count / total)
            text = f"\r{label} [{'#' * filled}{'-' * (30 - filled)}] {count}/{total}"
        else:
            text = f"\r{label} {count}"
        stream.write(text + ("\n" if final else ""))
        stream.flush()

    for item in items:
        yield item
        count += 1
        now = time.monotonic()
        if stream.isatty() and now - last >= min_interval:
            draw()
            last = now
    draw(final=True)


class Meter:
    """Progress of a job counted in units (files): `label n/total, rate/s, m:ss left` on
    stderr, redrawn at most every `min_interval` s on a terminal, every `log_interval` s as a
    line elsewhere (a batch job's log); `done` units were done before (a resumed job)."""

    def __init__(self, label: str, total: int, done: int = 0, stream=None,
                 min_interval: float = 0.2, log_interval: float = 60.0):
        self.label, self.total, self.count, self.start_count = label, total, done, done
        self.stream = stream or sys.stderr
        self.min_interval, self.log_interval = min_interval, log_interval
        self.start = self.last = time.monotonic()

    def text(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.count - self.start_count) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.count) / rate if rate > 0 else None
        eta = "" if left is None else f", {int(left // 60)}:{int(left % 60):02d} left"
        return f"{self.label} {self.count}/{self.total}, {rate:.1f}/s{eta}"

    def update(self, units: int) -> None:
        self.count += units
        now = time.monotonic()
        terminal = self.stream.isatty()
        if now - self.last >= (self.min_interval if terminal else self.log_interval):
            self.stream.write(("\r" if terminal else "") + self.text() + ("" if terminal
                                                                         else "\n"))
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        self.stream.write(("\r" if self.stream.isatty() else "") + self.text() + "\n")
        self.stream.flush()
