"""Configuration: nested dicts loaded from TOML, with dotted overrides (``train.lr=3e-4``) whose
values are parsed as TOML literals (numbers, booleans, strings, arrays), and a TOML writer for
``--dry-run``."""

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


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None


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


def apply_overrides(cfg: Mapping, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` overrides; unknown top-level tables are created."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"override '{item}' has an empty key")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise InputError(f"override '{item}': '{p}' is a value, not a table")
            node = nxt
        node[parts[-1]] = parse_value(value.strip())
    return out


def get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def config_hash(cfg: Mapping) -> str:
    return sha256_json(cfg)


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
