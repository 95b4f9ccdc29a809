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
