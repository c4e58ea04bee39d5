"""Command-line flags generated from a config dataclass, so a command and the Python API share
one set of defaults (the dataclass's).

:func:`add_dataclass_arguments` adds one ``--flag`` per field of a dataclass to an
``argparse`` parser; :func:`from_args` builds the dataclass back from the parsed namespace.

Per field, from its annotation and default:

* ``int``, ``float``, ``str``, ``pathlib.Path``: ``--name VALUE`` of that type;
* ``Optional[X]`` / ``X | None``: as ``X``, and the word ``none`` gives None (what the help
  shows as ``(default: none)``; without ``choices``); a union of several types parses its
  **first** non-None member (``str | Sequence[str] | None`` reads a string on the command
  line; the other members are for Python callers);
* ``Literal["a", "b"]``: ``--name {a,b}``;
* ``bool``: default False -> ``--name`` (``store_true``); default True -> ``--no-name``
  (``store_false``), so a switch is always off unless given; with
  ``choices={field: ("on", "off")}`` it takes a value instead (``--name on|off``, the first
  word meaning True);
* ``tuple[X, ...]`` / ``list[X]``: ``--name V [V ...]`` (``nargs="+"``), built back as that
  container.

Help texts come from ``help`` (the caller's, per field) or else from the field's
``metadata["help"]`` (``field(default=..., metadata={"help": "..."})``: the dataclass documents
its own fields, so a new field is a documented flag without touching the command), or else
from ``fallback_help`` (texts a command keeps for fields whose class has no metadata yet,
read as metadata; entries naming no field are ignored). A ``help`` text of a bool switch
says what the switch does (``"skip the final training"`` for ``--no-final``); a metadata text
says what the field means, and the switch of a True field is explained from it (``"...
(default: on; --no-final turns it off)"``).

``names`` renames a flag (``{"dtypes": "--dtype"}``; for a bool, the flag as given, e.g.
``{"ops": "--e2e-only"}`` for a True-by-default field is its ``store_false`` switch),
``choices`` restricts values, ``types`` replaces the parser type (a validator such as
``positive_int``), ``exclude`` leaves fields out (they keep their dataclass default in
:func:`from_args`). :func:`field_flags` names the flag of each field (to point a validation
error at its flag). Every flag needs a help text; the default is appended to it (``(default:
0.25)``) unless the text already says ``default``. Unsupported annotations are a TypeError
naming the field: exclude the field or give it a ``types`` entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import types as _types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_dataclass_arguments", "dataclass_defaults", "field_flags", "from_args"]

_SCALARS = (int, float, str, Path)


def _fields(cls) -> list[dataclasses.Field]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    return [f for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def dataclass_defaults(cls) -> dict[str, Any]:
    """``{field: default}`` of a dataclass (fields without a default are left out)."""
    return {f.name: d for f in _fields(cls) if (d := _default(f)) is not dataclasses.MISSING}


def _strip_optional(tp) -> tuple[Any, bool]:
    """(the type the command line parses, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(_types, "UnionType") and origin is _types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _kind(name: str, tp) -> tuple[str, Any]:
    """Classify an annotation: ("scalar", type) | ("literal", values) | ("bool", None) |
    ("seq", (container, item type))."""
    tp, _ = _strip_optional(tp)
    if tp is bool:
        return "bool", None
    if tp in _SCALARS:
        return "scalar", tp
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "literal", typing.get_args(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item = args[0] if args else str
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"field {name!r}: only tuple[X, ...] (any length) is supported")
        if item in _SCALARS:
            return "seq", (origin, item)
    raise TypeError(
        f"field {name!r}: no command-line form for annotation {tp!r}; exclude it "
        "or give it a `types` entry"
    )


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v)) or "none"
    return str(v)


def _help(text: str, default: Any) -> str:
    # argparse %-formats help strings: a literal % in the caller's text must survive
    text = text.replace("%", "%%")
    if "default" in text.lower():
        return text
    return f"{text} (default: {_show(default).replace('%', '%%')})"


def field_flags(
    cls, names: Mapping[str, str] | None = None, choices: Mapping[str, Iterable[Any]] | None = None
) -> dict[str, str]:
    """``{field: flag}`` as :func:`add_dataclass_arguments` names them (``--no-x`` for a
    True-by-default bool switch unless renamed; a bool with ``choices`` keeps ``--x``)."""
    names, choices = dict(names or {}), dict(choices or {})
    out = {}
    for f in _fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.name not in names and f.name not in choices and _default(f) is True:
            flag = "--no-" + f.name.replace("_", "-")
        out[f.name] = names.get(f.name, flag)
    return out


def _help_texts(cls, fields, help, fallback_help) -> dict[str, tuple[str, str]]:
    """``{field: (text, where)}``, ``where`` "help" (the caller's words, a switch's own) or
    "metadata" (the field's meaning: its metadata or ``fallback_help`` text)."""
    out = {}
    for f in fields:
        if f.name in help:
            out[f.name] = (help[f.name], "help")
        elif f.metadata.get("help"):
            out[f.name] = (str(f.metadata["help"]), "metadata")
        elif f.name in fallback_help:  # stands in for the metadata: the field's meaning
            out[f.name] = (fallback_help[f.name], "metadata")
    missing = [f.name for f in fields if f.name not in out]
    if missing:
        raise ValueError(
            f"no help text for {cls.__name__} fields {missing} (give "
            "metadata={'help': ...} or a help entry)"
        )
    return out


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls,
    *,
    help: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    fallback_help: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (see the module docstring).
    Every field not in ``exclude`` needs a text in ``help``, its ``metadata["help"]`` or
    ``fallback_help``; a key of ``help``/``names``/``choices``/``types`` that is not a field
    is a ValueError (a typo would otherwise leave a flag undocumented)."""
    exclude, names, help = set(exclude), dict(names or {}), dict(help or {})
    choices, types = dict(choices or {}), dict(types or {})
    fields = [f for f in _fields(cls) if f.name not in exclude]
    known = {f.name for f in _fields(cls)}
    for what, mapping in (("help", help), ("names", names), ("choices", choices), ("types", types)):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"{what} names fields {cls.__name__} does not have: {unknown}")
    texts = _help_texts(cls, fields, help, dict(fallback_help or {}))
    flags = field_flags(cls, names, choices)
    hints = typing.get_type_hints(cls)
    for f in fields:
        default = _default(f)
        if default is dataclasses.MISSING:
            raise TypeError(f"field {f.name!r} has no default: a flag needs one")
        flag, (text, where) = flags[f.name], texts[f.name]
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        kind, info = ("scalar", types[f.name]) if f.name in types else _kind(f.name, hints[f.name])
        if kind == "bool" and f.name in choices:
            yes, no = tuple(choices[f.name])
            kw.update(type=_word_bool(f.name, yes, no), metavar=f"{{{yes},{no}}}")
            parser.add_argument(flag, help=_help(text, yes if default else no), **kw)
            continue
        if kind == "bool":
            kw["action"] = "store_false" if default else "store_true"
            if where == "metadata" and default:  # the field's meaning; the flag turns it off
                text = f"{text} (default: on; {flag} turns it off)"
            # a switch is the non-default side of its field, so it is off unless given
            parser.add_argument(flag, help=_help(text, False), **kw)
            continue
        elif kind == "literal":
            kw["choices"] = list(info)
            kw["type"] = type(info[0])
        elif kind == "seq":
            kw.update(nargs="+", type=info[1])
        else:
            kw["type"] = info
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        if "choices" not in kw:  # named after the flag, not the field (--dtype DTYPE)
            kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if kind == "scalar" and _strip_optional(hints[f.name])[1]:
                kw["type"] = _or_none(kw["type"])
        parser.add_argument(flag, help=_help(text, default), **kw)


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, except that the word ``none`` is None (an Optional field's "not set", the
    default the help shows as ``(default: none)``)."""

    def parse_or_none(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse's messages
    return parse_or_none


def _word_bool(name: str, yes: str, no: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text not in (yes, no):
            raise argparse.ArgumentTypeError(f"use {yes} or {no}, not {text!r}")
        return text == yes

    parse.__name__ = name  # argparse names the type in its error message
    return parse


def from_args(cls, args: argparse.Namespace, **overrides):
    """``cls(**{field: args.<field>})`` for every field the namespace has, then
    ``overrides`` on top; fields the namespace lacks (excluded ones) keep their dataclass
    default. A sequence field becomes its annotated container (argparse gives lists)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in _fields(cls):
        if f.name in overrides or not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        if isinstance(v, list):
            tp, _ = _strip_optional(hints[f.name])
            if typing.get_origin(tp) is tuple:
                v = tuple(v)
        kw[f.name] = v
    kw.update(overrides)
    return cls(**kw)
