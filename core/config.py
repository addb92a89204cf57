"""Configuration: TOML tables and dotted overrides, read through typed tables.

A run's configuration is a nested dict of tables (``data``, ``model``, ``process``, ``objective``,
``train``, ``sample``) plus the ``domain`` name. Every table has a schema, a :class:`Table`
dataclass whose fields are its keys (type, default, checks in the annotation, a one-line comment
beside each): the engine's own tables live beside the code that reads them
(``core.train.TrainConfig``, ``core.sampling.SampleConfig``, ``core.objectives.ObjectiveConfig``,
``core.process.ProcessConfig``), a domain declares ``model`` and ``data`` (``Domain.tables``).

:func:`resolve` merges layers in order (engine defaults < domain defaults < a TOML file <
command-line overrides) and checks the result against the schemas. An unknown section or key is an
error with a "did you mean" suggestion; a wrong type or a value out of range is an error naming the
key, the problem and the layer (file) that set it. The resolved config stays a plain nested dict,
with every default filled in: JSON in run folders, hashed for manifests, printed by ``--dry-run``.

Selector keys. A table whose other keys depend on one of its values declares that key
(``process.name`` selects the process whose constructor parameters are the table's other keys;
``sample.sampler`` adds its sampler's options; ``model.network``). When a layer changes the
selector, the keys that earlier layers set for the old choice are dropped before the layer's own
keys apply, so ``process.name=rectified_flow`` on a domain whose default is a polynomial schedule
gives a clean rectified-flow table, and ``process.power=3`` beside it is an error.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .io import InputError, sha256_json
from .schema import (REQUIRED, Annotated, Check, ConfigError, FieldSpec, Table, at_least, one_of, positive,
                     specs_of_dataclass, specs_of_defaults, specs_of_signature, suggest, table_from_defaults,
                     unit_interval)

__all__ = ["resolve", "check_config", "load_toml", "parse_value", "overrides_layer", "apply_overrides", "deep_merge",
           "flatten", "lookup", "config_differences", "config_hash", "dump_toml", "jsonable", "json_default",
           # the table schemas (core.schema), for domains that declare their tables
           "ConfigError", "Check", "FieldSpec", "Table", "Annotated", "at_least", "positive", "unit_interval",
           "one_of", "specs_of_dataclass", "specs_of_defaults", "specs_of_signature", "table_from_defaults"]


# ----------------------------------------------------------------------------- resolving layers


def _table_keys(cls: type[Table], table: Mapping) -> dict[str, FieldSpec] | None:
    """Every key the table may hold given its selector's value; None for an unknown choice."""
    specs = dict(cls.fields())
    if cls.selector is not None:
        extra = cls.choice_fields(table.get(cls.selector, specs[cls.selector].default))
        if extra is None:
            return None
        specs.update(extra)
    return specs


def _merge_table(cls: type[Table], base: dict, layer: Mapping, where: str, sources: dict, name: str) -> dict:
    out = copy.deepcopy(base)
    sel = cls.selector
    if sel is not None and sel in layer and layer[sel] != out.get(sel, cls.fields()[sel].default):
        static = cls.fields()
        for k in [k for k in out if k not in static]:  # the old choice's keys
            del out[k]
            sources.pop(f"{name}.{k}", None)
    for k, v in layer.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
        sources[f"{name}.{k}"] = where
    return out


def resolve(schema: Mapping[str, type[Table]], layers: Iterable[tuple[str, Mapping]], *, domain: str) -> dict:
    """Merge ``layers`` ((where, nested dict) pairs, lowest first) and check them against
    ``schema`` (table name -> Table): the complete, checked config. Errors name the layer."""
    cfg: dict = {}
    sources: dict[str, str] = {}
    for where, layer in layers:
        if not isinstance(layer, Mapping):
            raise InputError(f"{where}: a config must be a table of tables, got {type(layer).__name__}")
        for name, value in layer.items():
            if name == "domain":
                if value != domain:
                    raise InputError(f"{where}: the config is for domain {value!r}, not '{domain}'")
                continue
            if name not in schema:
                raise InputError(f"{where}: unknown section [{name}]{suggest(name, schema)}; the sections are "
                                 f"{', '.join(sorted(schema))}")
            if not isinstance(value, Mapping):
                raise InputError(f"{where}: [{name}] must be a table of keys, got {value!r}")
            cfg[name] = _merge_table(schema[name], cfg.get(name, {}), value, where, sources, name)
    return check_config(schema, cfg, domain=domain, sources=sources)


def check_config(schema: Mapping[str, type[Table]], cfg: Mapping, *, domain: str,
                 sources: Mapping[str, str] | None = None) -> dict:
    """Fill defaults into a (merged) config and check it; the complete config."""
    sources = sources or {}
    out: dict = {"domain": domain}
    try:
        for name, cls in schema.items():
            out[name] = _check_table(name, cls, dict(cfg.get(name) or {}))
        for name, cls in schema.items():
            cls.check(out[name], out)
    except ConfigError as e:
        where = _source_of(e.key, sources)
        if where is None:
            raise
        raise e.located(where) from None
    extra = [k for k in cfg if k not in schema and k != "domain"]
    if extra:
        raise InputError(f"unknown section [{extra[0]}]{suggest(extra[0], schema)}")
    return out


def _source_of(key: str, sources: Mapping[str, str]) -> str | None:
    """The layer that set ``key`` (or the table holding it)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        where = sources.get(".".join(parts[:i]))
        if where is not None:
            return where
    return None


def _check_table(name: str, cls: type[Table], table: dict) -> dict:
    specs = _table_keys(cls, table)
    if specs is None:
        sel = cls.selector
        raise ConfigError(f"{name}.{sel}", cls.fields()[sel].check.problem(table[sel]) if cls.fields()[sel].check
                          else f"unknown choice {table[sel]!r}")
    for k in table:
        if k not in specs:
            owner = f" for {cls.selector} = {table.get(cls.selector, specs[cls.selector].default)!r}" \
                if cls.selector else ""
            raise ConfigError(f"{name}.{k}", f"unknown key{owner}{suggest(k, specs)}; the keys of [{name}] are "
                                             f"{', '.join(sorted(specs))}")
    out = {}
    for k, spec in specs.items():
        if k not in table and spec.nonfinite and isinstance(spec.default, float) and not math.isfinite(spec.default):
            continue
        v = table.get(k, copy.deepcopy(spec.default))
        if v is REQUIRED:
            raise ConfigError(f"{name}.{k}", "is required here and has no default")
        problem = spec.problem(v)
        if problem is not None:
            raise ConfigError(f"{name}.{k}", problem)
        out[k] = spec.coerce(v)
    return out


# ----------------------------------------------------------------------------- files and overrides


def load_toml(path: str | Path) -> dict:
    """A config file: TOML, or JSON when it ends in ``.json`` (a run folder's resolved config.json,
    so a run can be resumed from its own record)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            cfg = json.loads(text)
            if not isinstance(cfg, dict):
                raise InputError(f"{path}: a JSON config must be an object of tables")
            return cfg
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({e})") from None


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested tables."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """A TOML literal (1e-4, true, [1, 2], "s"); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def overrides_layer(overrides: Iterable[str]) -> dict:
    """``key.sub=value`` strings as one nested table (values parsed as TOML literals)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"override '{item}' has an empty key")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise InputError(f"override '{item}': '{p}' is a value, not a table")
            node = nxt
        node[parts[-1]] = parse_value(value.strip())
    return out


def apply_overrides(cfg: Mapping, overrides: Iterable[str]) -> dict:
    """``cfg`` with the overrides merged in (no schema: see :func:`resolve` for checked configs)."""
    return deep_merge(cfg, overrides_layer(overrides))


# ----------------------------------------------------------------------------- walking and comparing


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf (a table with no keys is a leaf of its own)."""
    if not isinstance(cfg, Mapping) or (not cfg and prefix):
        return {prefix: cfg}
    out = {}
    for k, v in cfg.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


_ABSENT = "<absent>"


def lookup(cfg: Mapping, dotted: str, default: Any = _ABSENT) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def config_differences(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two nested configs (sorted)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, _ABSENT) != fb.get(k, _ABSENT))


def config_hash(cfg: Mapping) -> str:
    return sha256_json(cfg)


def json_default(o):
    """JSON for the NumPy scalars, one-element tensors, paths and tuples that configs and records hold."""
    import numpy as np
    import torch

    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} as JSON")


def jsonable(obj):
    """``obj`` as it reads back from JSON."""
    return json.loads(json.dumps(obj, default=json_default))


# ----------------------------------------------------------------------------- TOML writer


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dump_toml(cfg: Mapping, _prefix: str = "") -> str:
    """Write nested dicts of scalars and lists as TOML (tables after the scalars of their parent)."""
    scalars = [f"{_key(k)} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, Mapping)]
    head = ([f"[{_prefix}]"] if _prefix else []) + scalars
    chunks = ["\n".join(head)] if scalars or (_prefix and not any(isinstance(v, Mapping) for v in cfg.values())) else []
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            chunks.append(dump_toml(v, f"{_prefix}.{_key(k)}" if _prefix else _key(k)).rstrip("\n"))
    return "\n\n".join(c for c in chunks if c) + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
