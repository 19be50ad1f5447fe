"""Options that take one value must be given once: `--density 0.3 --density 0.5` is an error.

Click keeps the last value of a repeated single-value option without a word. `OneValueCommand`
looks at the raw arguments before Click parses them and stops with one red line naming the flag
and the values given. Options declared `multiple` (e.g. `--model`, `--weight`) and counters may
repeat; an on/off pair (`--normalize/--no-normalize`) counts as one option. Generic: register
any Typer command with `app.command(..., cls=OneValueCommand)`.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

from paligemma_cli.cli._ui import error_line


def repeated_options(command: Any, args: list[str]) -> dict[str, list[str]]:
    """{flag as first written: [values or spellings given]} for single-value options given twice.
    `command` is a Click command (Typer vendors its own Click, so options are told by their
    `param_type_name`)."""
    seen: dict[str, list[str]] = {}
    names: dict[str, Any] = {}
    for param in command.params:
        if param.param_type_name == "option" and not param.multiple and not param.count:
            for name in [*param.opts, *param.secondary_opts]:
                names[name] = param
    owner: dict[int, str] = {}  # id(option) -> the first spelling used
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        option = names.get(name)
        if option is not None:
            takes_value = not option.is_flag
            value = inline or (args[i + 1] if takes_value and not inline and i + 1 < len(args) else name)
            first = owner.setdefault(id(option), name)
            seen.setdefault(first, []).append(value)
            i += 2 if takes_value and not inline else 1
            continue
        i += 1
    return {flag: values for flag, values in seen.items() if len(values) > 1}


class OneValueCommand(TyperCommand):
    """A Typer command that refuses a single-value option given more than once."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not any(a in ("-h", "--help") for a in args):
            repeated = repeated_options(self, args)
            if repeated:
                flag, values = next(iter(repeated.items()))
                others = f" (also: {', '.join(list(repeated)[1:])})" if len(repeated) > 1 else ""
                error_line(f"{flag} was given {len(values)} times ({', '.join(values)}); it takes one "
                           f"value{others}.", f"Give {flag} once.")
                raise typer.Exit(1)
        return super().parse_args(ctx, args)
