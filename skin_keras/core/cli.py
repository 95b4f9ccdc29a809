"""What every top-level script shares: flags generated from its config class (and --verbose,
which console.py reads), the library's messages on the console, and one-line user errors."""

import inspect
import os
import sys
import types
import typing
import warnings

from absl import app, flags, logging
from PIL import Image

from skin_keras.core import errors, log
from skin_keras.core.errors import UserError
from skin_keras.core.options import specs


def _base_type(annotation):
    """str for `str | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return typing.get_origin(annotation) or annotation


def define_flags(config_class, flag_values=flags.FLAGS) -> None:
    """Defines one absl flag per field of `config_class`, from its `options.option()`
    declaration: name, default, help, enum values, required. The flags belong to the calling
    script, so `--helpshort` lists them."""
    caller = inspect.getmodule(inspect.stack()[1].frame)
    module_name = sys.argv[0] if caller is None or caller.__name__ == "__main__" else (
        caller.__name__)
    if "verbose" not in flag_values:
        flags.DEFINE_boolean("verbose", False, "Also show TensorFlow's start-up and internal "
                             "messages (CUDA probing, deprecation warnings).",
                             flag_values=flag_values, module_name=module_name)
    for field in specs(config_class):
        meta, default = field.metadata, field.default
        kind = _base_type(field.type)
        # A missing required flag is the config's one-line UserError (check_options), not
        # absl's "FATAL Flags parsing error" with exit 1.
        common = dict(flag_values=flag_values, module_name=module_name)
        if kind is bool:
            flags.DEFINE_boolean(field.name, default, meta["help"], **common)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, meta["help"], **common)
        elif kind is float:
            flags.DEFINE_float(field.name, default, meta["help"], **common)
        elif kind is tuple:
            define = flags.DEFINE_multi_string if meta.get("repeated") else flags.DEFINE_list
            define(field.name, list(default) if default is not None else None, meta["help"],
                   **common)
        elif meta.get("choices") and meta.get("case_sensitive", True):
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"], **common)
        else:
            flags.DEFINE_string(field.name, default, meta["help"], **common)


def config_from_flags(config_class, argv, flag_values=flags.FLAGS):
    """The config the parsed flags describe (its checks run here); UserError for stray
    arguments."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    values = {}
    for field in specs(config_class):
        value = flag_values[field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**values)


def script(config_class, job):
    """The `main(argv)` of a script whose flags are `config_class`'s fields and whose work is
    `job(config)`; defines the flags."""
    define_flags(config_class)

    def main(argv):
        job(config_from_flags(config_class, argv))  # Its result is not an exit code.

    return main


def run(main) -> None:
    """`absl.app.run(main)`, with a UserError printed as one line (exit 2, or the error's
    `exit_code`) instead of a traceback."""
    program = os.path.basename(sys.argv[0])
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if program == "__main__.py" and spec is not None:  # python -m skin_keras.<package>
        program = f"python -m {spec.name.removesuffix('.__main__')}"

    def guarded_main(argv):
        if not flags.FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the report.
            logging.set_verbosity(logging.WARNING)
        log.show_on_console()
        # A large image is decoded by TensorFlow, which has no pixel limit; PIL, which reads
        # its header, would warn about a "decompression bomb" above 89 Mpx (and refuses, by
        # name, above 179 Mpx: folders.inspect_image).
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        try:
            return main(argv)
        except UserError as error:
            sys.stderr.write(f"{program}: error: {error}\n")
            if getattr(error, "exit_at_once", False):  # Skip teardown that would wait or fail.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(error.exit_code)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write(f"{program}: interrupted\n")
            sys.exit(130)
        except OSError as error:
            line = errors.environment_error(error)
            if line is None:  # Not the machine's doing: a bug, with its traceback.
                raise
            sys.stderr.write(f"{program}: error: {line}\n")
            sys.exit(UserError.exit_code)

    app.run(guarded_main)

