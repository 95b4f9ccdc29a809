"""How the library reports: the `skin_keras` logger, and the console handler the scripts add.

Library modules log through `logging.getLogger(__name__)` (children of `skin_keras`) and never
print. `show_on_console()`, called by `cli.run` for every script, sends those records to
stdout as plain lines (the messages carry their own `note:` or `warning:` prefix where one is
meant); a program that imports the library configures logging as it likes, and a test reads
the records with pytest's `caplog`.
"""

import logging
import sys

ROOT = "skin_keras"


class _Stdout(logging.Handler):
    """Writes each message as a line to the current sys.stdout (looked up at every record, so
    a redirected stdout is honoured)."""

    def emit(self, record):
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # pylint: disable=broad-except  (logging's own convention)
            self.handleError(record)


def show_on_console(level: int = logging.INFO) -> None:
    """Library messages at `level` and above go to stdout, once, as plain lines."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _Stdout) for handler in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # absl's root handler would print each message a second time.


logging.getLogger(ROOT).addHandler(logging.NullHandler())
