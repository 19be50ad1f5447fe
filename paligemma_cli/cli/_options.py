"""Typer options generated from the config dataclasses, so each setting is declared once.

The dataclass field's metadata holds the help text and choices; here every field becomes an
option whose default is None ("not given"), so `config.build_run` can layer
defaults < `--config FILE.yaml` < flags. The real default is shown in `--help`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional

import typer

from paligemma_cli.config import flag

PANELS = {"ModelConfig": "Model", "LoraConfig": "LoRA", "DataConfig": "Data",
          "TrainConfig": "Training", "EvalConfig": "Evaluation"}


def _annotation(f: dataclasses.Field) -> Any:
    kind = str(f.type)
    if "Path" in kind:
        return Optional[Path]
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if kind.startswith(name):
            return Optional[typ]
    return Optional[str]


def _default_text(f: dataclasses.Field) -> str | bool:
    if f.default is dataclasses.MISSING or f.default is None:
        return False
    return str(f.default)


def field_parameter(f: dataclasses.Field, panel: str | None) -> inspect.Parameter:
    meta = f.metadata
    annotation = _annotation(f)
    if meta.get("positional"):
        default = typer.Argument(..., help=meta["help"], show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=default, annotation=str)
    decls = [flag(f.name)]
    if annotation == Optional[bool]:
        decls = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"]
    kwargs: dict[str, Any] = dict(help=meta["help"], show_default=_default_text(f),
                                  rich_help_panel=panel)
    if meta.get("choices"):
        annotation = Optional[Literal[tuple(meta["choices"])]]  # typer shows and checks the choices
    if meta.get("repeatable"):  # given twice, the values add up (never silently the last one)
        annotation = Optional[List[str]]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                             default=typer.Option(None, *decls, **kwargs), annotation=annotation)


def parameters_for(*classes: type, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    params = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name not in exclude:
                params.append(field_parameter(f, PANELS.get(cls.__name__)))
    return params


def command_with(params: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Give `func(**kwargs)` the signature `params` (+ its own named parameters) for Typer."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        positional = [p for p in params + own if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params + own
                   if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]

        @functools.wraps(func)
        def wrapper(**kwargs):
            return func(**kwargs)

        wrapper.__signature__ = inspect.Signature(positional + keyword)
        del wrapper.__wrapped__
        return wrapper

    return decorate
