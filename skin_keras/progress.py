"""A dependency-free progress bar for batch jobs (preparing data, predicting folders)."""

import sys
import time
from collections.abc import Iterable, Sized


def progress(items: Iterable, label: str, stream=None, min_interval: float = 0.2):
    """Yields `items`, drawing `label [#####-----] n/total` on stderr; one final line at the end."""
    stream = stream or sys.stderr
    total = len(items) if isinstance(items, Sized) else None
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
