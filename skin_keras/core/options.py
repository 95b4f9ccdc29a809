"""Declaring options once: a config dataclass field carries its default, help, allowed values.

Every script's configuration is a frozen dataclass whose fields are declared with `option()`.
The command-line flags are generated from those declarations (`cli.define_flags`), the generic
checks (allowed values, ranges) run from them (`check_options`), and path fields are made
absolute in one place (`resolve_paths`), so a field is written once and nowhere else. This
module imports no TensorFlow.
"""

import dataclasses
import math
import os

from skin_keras.core.errors import UserError


def option(default, help: str, *, choices=None, low=None, high=None, path: bool = False,
           keywords: tuple[str, ...] = (), case_sensitive: bool = True, repeated: bool = False,
           required: bool = False, kind: str | None = None):
    """A config field with everything its flag and its checks need.

    Args:
      default: The default value (None with `required`).
      help: The flag's help text.
      choices: Allowed values (the flag becomes an enum).
      low, high: Inclusive range of a number.
      path: The value is a file system path, made absolute (`~` expanded) when the config is
        built, unless it is one of `keywords` (e.g. "imagenet", "none") or empty.
      case_sensitive: With `choices`: whether "adam" may stand for "Adam".
      repeated: A tuple value given by repeating the flag (else a comma-separated list).
      required: The flag must be given.
      kind: With `choices`, what they are, for the error message ("a validation metric").
    """
    metadata = dict(help=help, choices=tuple(choices) if choices is not None else None, low=low,
                    high=high, path=path, keywords=tuple(keywords),
                    case_sensitive=case_sensitive, repeated=repeated, required=required,
                    kind=kind)
    return dataclasses.field(default=default, metadata=metadata)


def specs(config_class) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config_class))


def part(config, part_class):
    """The typed part `part_class` of `config`: a dataclass whose fields `config` has too (a
    config class includes option groups such as `Augmentation` by inheriting them)."""
    return part_class(**{field.name: getattr(config, field.name)
                         for field in dataclasses.fields(part_class)})


def check_range(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise UserError(f"--{name}={value} is out of range [{low}, {high}]")


def canonical_choice(name: str, value: str, choices, case_sensitive: bool = True,
                     kind: str | None = None) -> str:
    """`value` as spelled in `choices`; UserError naming the flag when it is not one of them."""
    for choice in choices:
        if value == choice or (not case_sensitive and value.lower() == choice.lower()):
            return choice
    problem = f"--{name}={value} is not {kind}" if kind else f"unknown --{name}={value}"
    raise UserError(f"{problem}; choose one of {', '.join(choices)}")


def check_options(config) -> None:
    """Allowed values and ranges of every field, as its `option()` declares them."""
    for field in specs(type(config)):
        meta, value = field.metadata, getattr(config, field.name)
        if value is None:
            if meta.get("required"):
                raise UserError(f"--{field.name} is required")
            continue
        if meta.get("choices") is not None:
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                canonical_choice(field.name, item, meta["choices"], meta["case_sensitive"],
                                 meta.get("kind"))
        if isinstance(value, float) and not math.isfinite(value):  # (--lr=inf diverges.)
            raise UserError(f"--{field.name}={value} is not a finite number")
        low, high = meta.get("low"), meta.get("high")
        if high is not None:
            check_range(field.name, value, low, high)
        elif low is not None and value < low:
            raise UserError(f"--{field.name}={value} must be at least {low}")


def resolve_paths(config) -> None:
    """Makes every path field absolute, in place (frozen dataclasses included): flags.cfg,
    the saved parameters and a resumed run then see one and the same value."""
    for field in specs(type(config)):
        meta, value = field.metadata, getattr(config, field.name)
        if meta.get("path") and value and value.lower() not in meta["keywords"]:
            object.__setattr__(config, field.name, os.path.abspath(os.path.expanduser(value)))


def to_flagfile(config) -> str:
    """An absl flagfile that replays `config` (paths are already absolute)."""
    lines = []
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            lines.append(f"--{name}={','.join(map(str, value))}")
        elif value is not None:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"
