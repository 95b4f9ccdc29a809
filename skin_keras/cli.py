"""What every top-level script shares: quiet TensorFlow start-up and one-line user errors."""

import os
import sys

from absl import app, flags, logging

from skin_keras.errors import UserError


def run(main) -> None:
    """`absl.app.run(main)`, with a UserError printed as one line (exit 2) instead of a traceback."""
    program = os.path.basename(sys.argv[0])

    def guarded_main(argv):
        if not flags.FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the report.
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except UserError as error:
            sys.stderr.write(f"{program}: error: {error}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write(f"{program}: interrupted\n")
            sys.exit(130)

    app.run(guarded_main)
