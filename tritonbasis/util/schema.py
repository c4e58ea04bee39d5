"""A small declarative schema for the documents the package reads back (the search state, the
non-tensor part of checkpoints): the expected shape of a document is written once, as nested
nodes, and :func:`problems` walks it in one pass, naming every mismatch by its path in the
document (``stages.selection.chosen[0]``) -- types, ranges, allowed words and names that must
exist (``Name("layer")``: a string the caller's ``names={"layer": ...}`` must hold).

The walk follows the schema, never the data's own nesting, so a document of any depth costs
no recursion beyond the schema's (``Json`` leaves: bounded by ``max_depth``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = [
    "Bool",
    "Int",
    "Is",
    "Json",
    "List",
    "Map",
    "Name",
    "Node",
    "Num",
    "Obj",
    "Opt",
    "SchemaError",
    "Str",
    "check",
    "problems",
]


class SchemaError(ValueError):
    """A document that does not match its schema (the message names the document and the
    fields)."""


def _at(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _type(v) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a bool",
        type(None): "null",
    }.get(type(v), f"a {type(v).__name__}")


class Node:
    """One node of a schema: ``check(value, where, ctx, out)`` appends a line per problem."""

    def check(self, v, where: str, ctx: Mapping[str, Collection[str]], out: list[str]) -> None:
        raise NotImplementedError


class Num(Node):
    """A finite number (int or float, not a bool) in ``[lo, hi]`` (None: unbounded)."""

    kind = "a number"

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def _typed(self, v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def check(self, v, where, ctx, out):
        if not self._typed(v):
            out.append(f"{where} is {_type(v)}, not {self.kind}")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{where} is {v}, not a finite number")
        elif (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            lo = "-inf" if self.lo is None else self.lo
            hi = "inf" if self.hi is None else self.hi
            out.append(f"{where} is {_show(v)}, outside [{lo}, {hi}]")


class Int(Num):
    """An integer (not a bool) in ``[lo, hi]``."""

    kind = "an integer"

    def _typed(self, v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)


class Bool(Node):
    def check(self, v, where, ctx, out):
        if not isinstance(v, bool):
            out.append(f"{where} is {_type(v)}, not true/false")


class Str(Node):
    """A string: one of ``choices``, or matching ``pattern`` (full match), at most
    ``max_len`` characters."""

    def __init__(
        self,
        choices: Collection[str] | None = None,
        pattern: str | None = None,
        max_len: int = 4096,
    ):
        self.choices, self.max_len = choices, max_len
        self.pattern = re.compile(pattern) if pattern else None

    def check(self, v, where, ctx, out):
        if not isinstance(v, str):
            out.append(f"{where} is {_type(v)}, not a string")
        elif len(v) > self.max_len:
            out.append(f"{where} is a string of {len(v)} characters (at most {self.max_len})")
        elif self.choices is not None and v not in self.choices:
            out.append(f"{where} is {_show(v)}, not one of {', '.join(map(repr, self.choices))}")
        elif self.pattern is not None and not self.pattern.fullmatch(v):
            out.append(f"{where} is {_show(v)}, not of the form {self.pattern.pattern}")


class Name(Str):
    """A string that must be one of ``ctx[kind]`` when the caller gives that set (e.g. the
    layers of the model a state belongs to); any string otherwise."""

    def __init__(self, kind: str, what: str | None = None):
        super().__init__()
        self.kind, self.what = kind, what or f"a {kind} of this run"

    def check(self, v, where, ctx, out):
        n = len(out)
        super().check(v, where, ctx, out)
        names = ctx.get(self.kind)
        if len(out) == n and names is not None and v not in names:
            out.append(f"{where} is {_show(v)}, not {self.what}")


class Opt(Node):
    """``null`` or ``node``."""

    def __init__(self, node: Node):
        self.node = node

    def check(self, v, where, ctx, out):
        if v is not None:
            self.node.check(v, where, ctx, out)


class Is(Node):
    """An instance of ``cls`` (e.g. a tensor in a checkpoint), named ``what`` in messages."""

    def __init__(self, cls: type | tuple[type, ...] | Callable[[], type], what: str):
        self.cls, self.what = cls, what

    def check(self, v, where, ctx, out):
        cls = self.cls if isinstance(self.cls, (type, tuple)) else self.cls()
        if not isinstance(v, cls):
            out.append(f"{where} is {_type(v)}, not {self.what}")


class List(Node):
    """A list of ``item``, ``min_len`` to ``max_len`` long; ``unique``: no repeats."""

    def __init__(
        self, item: Node, min_len: int = 0, max_len: int | None = None, unique: bool = False
    ):
        self.item, self.min_len, self.max_len, self.unique = item, min_len, max_len, unique

    def check(self, v, where, ctx, out):
        if not isinstance(v, list):
            out.append(f"{where} is {_type(v)}, not a list")
            return
        if len(v) < self.min_len or (self.max_len is not None and len(v) > self.max_len):
            out.append(
                f"{where} has {len(v)} entries (expected {self.min_len} to "
                f"{self.max_len if self.max_len is not None else 'any number'})"
            )
        n = len(out)
        for i, x in enumerate(v):
            self.item.check(x, _at(where, i), ctx, out)
        if self.unique and len(out) == n and len({repr(x) for x in v}) != len(v):
            out.append(f"{where} repeats entries")


class Map(Node):
    """An object with any keys (checked by ``key``) mapping to ``value``s."""

    def __init__(self, value: Node, key: Str | None = None):
        self.value, self.key = value, key or Str()

    def check(self, v, where, ctx, out):
        if not isinstance(v, dict):
            out.append(f"{where} is {_type(v)}, not an object")
            return
        for k, x in v.items():
            n = len(out)
            self.key.check(k, f"{where or 'the document'} key", ctx, out)
            if len(out) == n:
                self.value.check(x, _at(where, k), ctx, out)


class Obj(Node):
    """An object with ``required`` and ``optional`` fields (name -> node); any other key is a
    problem unless ``extra`` (a node for every other value) is given."""

    def __init__(
        self,
        required: Mapping[str, Node] | None = None,
        optional: Mapping[str, Node] | None = None,
        extra: Node | None = None,
    ):
        self.required, self.optional = dict(required or {}), dict(optional or {})
        self.extra = extra

    def check(self, v, where, ctx, out):
        if not isinstance(v, dict):
            out.append(f"{where or 'the document'} is {_type(v)}, not an object")
            return
        for k in self.required:
            if k not in v:
                out.append(f"{_at(where, k)} is missing")
        for k, x in v.items():
            node = self.required.get(k) or self.optional.get(k) or self.extra
            if node is None:
                out.append(f"{_at(where, k)} is not a field of this document")
            else:
                node.check(x, _at(where, k), ctx, out)


class Json(Node):
    """Any JSON value (finite numbers, strings, bools, null, lists, objects with string keys)
    at most ``max_depth`` levels deep."""

    def __init__(self, max_depth: int = 16):
        self.max_depth = max_depth

    def check(self, v, where, ctx, out, depth: int = 0):
        if depth > self.max_depth:
            out.append(f"{where} nests deeper than {self.max_depth} levels")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{where} is {v}, not a finite number")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                self.check(x, _at(where, i), ctx, out, depth + 1)
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    out.append(f"{where} has a key {_show(k)} that is not a string")
                else:
                    self.check(x, _at(where, k), ctx, out, depth + 1)
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            out.append(f"{where} is {_type(v)}, not a JSON value")


def problems(
    doc: Any, schema: Node, names: Mapping[str, Collection[str]] | None = None
) -> list[str]:
    """Every mismatch of ``doc`` against ``schema``, one line each (empty: it matches).
    ``names``: the sets :class:`Name` nodes check against (kind -> names)."""
    out: list[str] = []
    schema.check(doc, "", dict(names or {}), out)
    return out


def check(
    doc: Any,
    schema: Node,
    what: str,
    names: Mapping[str, Collection[str]] | None = None,
    shown: int = 4,
) -> None:
    """Raise :class:`SchemaError` (``"<what>: <problem>; <problem>; ... (N more)"``) unless
    ``doc`` matches ``schema``."""
    found = problems(doc, schema, names)
    if found:
        more = f" ({len(found) - shown} more)" if len(found) > shown else ""
        raise SchemaError(f"{what}: {'; '.join(found[:shown])}{more}")
