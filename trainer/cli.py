"""Command lines built from dataclasses: one flag per field, its help, choices and default from the field."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import field
from typing import Any


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, required: bool = False) -> Any:
    """A dataclass field that becomes a flag (--field-name) with this help."""
    return field(default=default, metadata={"help": help, "choices": choices, "required": required})


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags get one line on stderr and exit status 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Per field: its scalar type and whether it is a list; `int | None` -> (int, False), `list[float] | None`
    -> (float, True)."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        is_list = typing.get_origin(hint) is list
        found[name] = (typing.get_args(hint)[0] if is_list else hint, is_list)
    return found


def build_parser(cls: type, prog: str, description: str | None = None) -> OneLineErrorParser:
    """A parser with one flag per field of the dataclass cls. Flags not given stay absent from the result
    (argument_default=SUPPRESS), so that a file or a saved configuration can fill them."""
    parser = OneLineErrorParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        flag, (kind, is_list) = "--" + f.name.replace("_", "-"), types_[f.name]
        help_text, choices, required = f.metadata["help"], f.metadata["choices"], f.metadata["required"]
        if "(default:" not in help_text and not required:
            help_text += f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
        parser.add_argument(flag, type=kind, choices=choices, metavar=metavar, help=help_text, required=required,
                            **({"nargs": "+"} if is_list else {}))
    return parser
