"""Typed config tables: the schema of one table as a dataclass whose fields are its keys.

    @dataclass(frozen=True)
    class SampleConfig(Table):
        steps: Annotated[int, Check(lo=1)] = 50  # intervals of the time grid

A field's type is checked (int, float, bool, str, lists of them, dict, unions), its ``Check``
holds a range, a set of names or a list length; ``selector`` names a key whose value brings more
keys (``choice_fields``). ``specs_of_signature`` reads a schema off a function's keyword
parameters (a process's constructor, a sampler's options), ``specs_of_defaults`` off a table of
defaults (a plugin that declares no schema). ``core.config.resolve`` checks whole configs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Annotated, Callable, ClassVar, Iterable, Mapping, Union

from .io import InputError

__all__ = ["ConfigError", "Check", "FieldSpec", "Table", "REQUIRED", "Annotated", "at_least", "positive",
           "unit_interval", "one_of", "specs_of_dataclass", "specs_of_defaults", "specs_of_signature",
           "table_from_defaults", "suggest"]


class ConfigError(InputError):
    """A bad config value; ``key`` is its dotted name (the resolver adds where it was set)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key, self.problem = key, problem

    def located(self, where: str) -> "ConfigError":
        """The same error with the layer that set the key (a file, the command line) in front."""
        err = ConfigError(self.key, self.problem)
        err.args = (f"{where}: {self.args[0]}",)
        return err


@dataclass(frozen=True)
class Check:
    """What a value must satisfy beyond its type: a range, a set of names, a list length."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Any = None  # an iterable of allowed values, or a callable returning one (read late)
    length: int | None = None  # exact length of a list

    def problem(self, v: Any) -> str | None:
        if self.choices is not None:
            allowed = list(self.choices() if callable(self.choices) else self.choices)
            if v not in allowed:
                near = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                return f"must be one of {', '.join(repr(a) for a in allowed)}, got {v!r}{hint}"
        if self.length is not None and isinstance(v, (list, tuple)) and len(v) != self.length:
            return f"must be a list of {self.length} values, got {v!r}"
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
                    return f"must be {self.range_text()}, got {v!r}"
                if self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)):
                    return f"must be {self.range_text()}, got {v!r}"
        return None

    def range_text(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def at_least(lo: float) -> Check:
    return Check(lo=lo)


def positive() -> Check:
    return Check(lo=0, lo_open=True)


def unit_interval() -> Check:
    return Check(lo=0, hi=1)


def one_of(choices) -> Check:
    return Check(choices=choices)


class _Required:
    def __repr__(self) -> str:
        return "<required>"

    def __deepcopy__(self, memo):
        return self


REQUIRED = _Required()  # the default of a key that has none: the table must set it


@dataclass(frozen=True)
class FieldSpec:
    """One key of a table: its type, default and checks."""

    name: str
    type: Any
    default: Any
    check: Check | None = None
    nonfinite: bool = False  # floats may be inf (a process's log-SNR bound); such a default is not
    # written into resolved configs (JSON has no infinity), only a value a layer sets

    def problem(self, v: Any) -> str | None:
        if not _accepts(self.type, v):
            return f"must be {_describe(self.type)}, got {v!r}"
        if isinstance(v, float) and not self.nonfinite and not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        if isinstance(v, float) and math.isnan(v):
            return f"must be a number, got {v!r}"
        return self.check.problem(v) if self.check is not None else None

    def coerce(self, v: Any) -> Any:
        """Ints given for float keys become floats (so 1 and 1.0 are one config)."""
        if self.type is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        return v


def _union_args(tp) -> tuple | None:
    if typing.get_origin(tp) is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return typing.get_args(tp)
    return None


def _accepts(tp, v) -> bool:
    if tp is Any:
        return True
    members = _union_args(tp)
    if members is not None:
        return any(_accepts(m, v) for m in members)
    origin = typing.get_origin(tp)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp is dict or origin is dict:
        return isinstance(v, Mapping)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        args = typing.get_args(tp)
        return not args or all(_accepts(args[0], x) for x in v)
    return isinstance(v, tp) if isinstance(tp, type) else True


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), dict: ("a table", "tables"), Any: ("a value", "values")}


def _describe(tp, plural: bool = False) -> str:
    members = _union_args(tp)
    if members is not None:
        return " or ".join(_describe(m, plural) for m in members)
    origin = typing.get_origin(tp)
    if tp in (list, tuple) or origin in (list, tuple):
        args = typing.get_args(tp)
        return "lists" if plural else (f"a list of {_describe(args[0], plural=True)}" if args else "a list")
    key = tp if origin is None else origin
    if key in _NAMES:
        return _NAMES[key][1 if plural else 0]
    name = getattr(tp, "__name__", str(tp))
    return f"{name}s" if plural else f"a {name}"


def _split_annotation(tp) -> tuple[Any, Check | None]:
    if typing.get_origin(tp) is Annotated:
        base, *extra = typing.get_args(tp)
        return base, next((e for e in extra if isinstance(e, Check)), None)
    return tp, None


def specs_of_dataclass(cls) -> dict[str, FieldSpec]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        base, check = _split_annotation(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = FieldSpec(f.name, base, default, check, nonfinite=bool(f.metadata.get("nonfinite")))
    return out


def specs_of_defaults(defaults: Mapping[str, Any]) -> dict[str, FieldSpec]:
    """A schema read off a table of defaults: each key's type is the type of its default."""
    out = {}
    for k, v in defaults.items():
        tp = Any if v is None else float if isinstance(v, float) else dict if isinstance(v, Mapping) \
            else list if isinstance(v, (list, tuple)) else type(v)
        out[k] = FieldSpec(k, tp, copy.deepcopy(v))
    return out


def specs_of_signature(fn: Callable, skip: Iterable[str] = ()) -> dict[str, FieldSpec]:
    """The keyword parameters of ``fn`` that have defaults, as table keys (the signature is the
    schema: a process's constructor, a sampler's options)."""
    skip = set(skip)
    out = {}
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: fall back to the defaults' types
        hints = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            out[p.name] = FieldSpec(p.name, _split_annotation(hints.get(p.name, Any))[0], REQUIRED)
            continue
        base, check = _split_annotation(hints.get(p.name, Any))
        if base is Any and p.default is not None:
            base = float if isinstance(p.default, float) else type(p.default)
        if base is float and isinstance(p.default, int) and not isinstance(p.default, bool):
            base = float
        nonfinite = isinstance(p.default, float) and not math.isfinite(p.default)
        out[p.name] = FieldSpec(p.name, base, p.default, check, nonfinite=nonfinite)
    return out


class Table:
    """Base of typed config tables: subclass as a frozen dataclass whose fields are the keys.

    ``selector`` names a key whose value brings more keys (``choice_fields``); ``check`` is a
    table-wide rule (raise ``ConfigError``). ``Table.of(mapping)`` gives the typed instance of a
    resolved table (its own fields; keys brought by the selector stay in the mapping)."""

    selector: ClassVar[str | None] = None

    @classmethod
    def fields(cls) -> dict[str, FieldSpec]:
        return specs_of_dataclass(cls)

    @classmethod
    def choice_fields(cls, value: Any) -> dict[str, FieldSpec] | None:
        """The keys the selector's ``value`` adds; None when ``value`` is not a known choice."""
        return {}

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        """Rules across keys (and tables) once every key is known to be well-typed."""

    @classmethod
    def of(cls, table: Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in table.items() if k in names})

    @classmethod
    def defaults(cls) -> dict:
        return {k: copy.deepcopy(s.default) for k, s in cls.fields().items() if s.default is not REQUIRED}


def table_from_defaults(name: str, defaults: Mapping[str, Any]) -> type[Table]:
    """A Table whose keys are those of a defaults table (a plugin that declares no schema)."""
    specs = specs_of_defaults(defaults)

    class FromDefaults(Table):
        @classmethod
        def fields(cls):
            return dict(specs)

        @classmethod
        def of(cls, table):
            return dict(table)

    FromDefaults.__name__ = FromDefaults.__qualname__ = f"{name.capitalize()}Table"
    return FromDefaults


def suggest(word: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest known name, or ""."""
    near = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""
