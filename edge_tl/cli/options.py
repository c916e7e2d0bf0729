"""A command's options made from its stage's settings model (``edge_tl.settings``), so that the CLI, the
pipeline file and the API share one declaration: name, type, default, limits and help."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import typer

from ..settings import StageSettings, cli_flag, validate


def _cli_type(annotation: Any) -> Any:
    """The plain type click parses (pydantic then checks choices and limits): a Literal of strings is a
    string, a list stays a list of strings, ``X | None`` is ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return type(args[0]) if all(type(a) is type(args[0]) for a in args) else str
    if origin in (typing.Union, types.UnionType):
        return _cli_type(args[0]) if len(args) == 1 else str  # ``"auto" | int``: a word, pydantic decides
    if origin is list:
        return list[str]
    return annotation


def _parameter(name: str, field: Any, text: str | None) -> inspect.Parameter:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    text = text or field.description
    kind = _cli_type(field.annotation)
    if extra.get("argument"):
        default: Any = typer.Argument(..., metavar=extra["argument"], help=text)
    else:
        flags = extra.get("flags") or ("--" + name.replace("_", "-"),)
        value = ... if field.is_required() else field.default
        default = typer.Option(value, *flags, metavar=extra.get("metavar"), help=text)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)


def settings_command(model: type[StageSettings], helps: dict[str, str] | None = None) -> Callable[..., Any]:
    """Decorate a command whose ``settings`` parameter is ``model``: its fields become the command's
    options (in the model's order, where ``settings`` stands), the values are validated by ``model``
    (errors name the flag: ``--mode: Input should be 'linear', 'partial' or 'full'``) and the command
    receives the model. ``helps`` overrides a field's help text (one computed at run time)."""

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command).parameters
        hints = typing.get_type_hints(command)
        fields = [_parameter(n, f, (helps or {}).get(n)) for n, f in model.model_fields.items()]
        params: list[inspect.Parameter] = []
        for p in own.values():
            if p.name == "settings":
                params += fields
            else:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation),
                                        kind=inspect.Parameter.KEYWORD_ONLY))
        names = set(model.model_fields)

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            # What the user typed, not typer's defaults: a task with defaults of its own (detect) reads
            # ``model_fields_set`` to know which options were given.
            given = {k: v for k, v in values.items() if k in names
                     and (model.model_fields[k].is_required() or v != model.model_fields[k].default)}
            settings = validate(model, given, lambda key: cli_flag(model, key))
            return command(settings=settings, **{k: v for k, v in values.items() if k not in names})

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        del run.__wrapped__  # typer reads the signature above, not the command's
        return run

    return wrap
