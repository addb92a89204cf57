"""Checkpoints: a folder with weights and optimizer state in safetensors and everything else in JSON.
Nothing is ever unpickled, so a checkpoint from a stranger cannot run code.

    step-00001000/
      checkpoint.json        format, sciffusion version, domain, step, config, data config, metrics,
                             Python/NumPy RNG states, optimizer hyper-parameters, file hashes
      model.safetensors      network weights
      ema.safetensors        EMA weights (optional)
      state.safetensors      optimizer tensors, torch RNG states, trainer tensors (optional)

The folder is written under a temporary name and renamed when complete; ``checkpoint.json`` lists
the sha256 of every file, so a truncated or altered file is detected on load. The checkpoint hash
is the sha256 of the weight files' hashes (what a generated sample's manifest records).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import json_default
from .io import InputError, atomic_directory, remove_stale_temporaries, sha256_file, sha256_json

FORMAT = "sciffusion-checkpoint/1"
META = "checkpoint.json"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(InputError):
    """A checkpoint that cannot be used: the message names the file and the problem."""


# ----------------------------------------------------------------------------- flattening


def flatten_optimizer(state: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (tensors, JSON)."""
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer/{pid}/{k}"] = v
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split("/", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states (torch CPU and CUDA as tensors; NumPy and Python as JSON)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss_next = random.getstate()
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(gauss)],
                     "python": [version, list(py_state), gauss_next]}


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "rng/numpy_keys" in tensors and "numpy" in meta:
        name, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((name, tensors["rng/numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in meta:
        version, state, gauss_next = meta["python"]
        random.setstate((version, tuple(state), gauss_next))


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


# ----------------------------------------------------------------------------- saving


def save_checkpoint(folder: str | Path, *, model: Mapping[str, torch.Tensor], meta: Mapping,
                    ema: Mapping[str, torch.Tensor] | None = None, optimizer: Mapping | None = None,
                    extra_tensors: Mapping[str, torch.Tensor] | None = None, rng: bool = False) -> Path:
    """Write a checkpoint folder atomically. ``meta`` needs at least ``domain`` and ``step``;
    ``optimizer`` is an optimizer ``state_dict()``; ``rng=True`` records the global RNG states."""
    folder = Path(folder)
    if folder.exists():
        raise CheckpointError(f"{folder}: a checkpoint already exists here")
    for k in ("domain", "step"):
        if k not in meta:
            raise ValueError(f"checkpoint meta needs '{k}'")
    from .version import __version__

    body = dict(meta)
    body["format"] = FORMAT
    body["sciffusion_version"] = __version__
    state_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        t, j = flatten_optimizer(optimizer)
        state_tensors.update(t)
        body["optimizer"] = j
    if rng:
        t, j = capture_rng()
        state_tensors.update(t)
        body["rng"] = j
    if extra_tensors:
        state_tensors.update({f"extra/{k}": v for k, v in extra_tensors.items()})
    with atomic_directory(folder) as tmp:
        save_file(_cpu(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_cpu(ema), str(tmp / "ema.safetensors"))
        if state_tensors:
            save_file(_cpu(state_tensors), str(tmp / "state.safetensors"))
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        body["files"] = files
        body["hash"] = sha256_json({k: v["sha256"] for k, v in files.items() if k in WEIGHT_FILES})
        (tmp / META).write_text(json.dumps(body, indent=2, sort_keys=True, default=json_default) + "\n")
    return folder


# ----------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def domain(self) -> str:
        return self.meta["domain"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def hash(self) -> str:
        return self.meta["hash"]

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def data_config(self) -> dict:
        return self.meta.get("data_config", {})

    def has(self, name: str) -> bool:
        return name in self.meta.get("files", {})

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one of the checkpoint's safetensors files (loaded once)."""
        if name not in self._cache:
            if not self.has(name):
                raise CheckpointError(f"{self.path}: the checkpoint has no {name}")
            path = self.path / name
            try:
                self._cache[name] = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
        return self._cache[name]

    def weights(self, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        if prefer_ema and self.has("ema.safetensors"):
            return self.tensors("ema.safetensors")
        return self.tensors("model.safetensors")

    def optimizer_state(self) -> dict:
        if "optimizer" not in self.meta:
            raise CheckpointError(f"{self.path}: the checkpoint holds no optimizer state (an exported model?)")
        return unflatten_optimizer(self.tensors("state.safetensors"), self.meta["optimizer"])

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        if not self.has("state.safetensors"):
            return {}
        return {k[len("extra/"):]: v for k, v in self.tensors("state.safetensors").items() if k.startswith("extra/")}

    def restore_rng(self) -> None:
        if "rng" in self.meta:
            restore_rng(self.tensors("state.safetensors"), self.meta["rng"])


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a folder, its checkpoint.json or one of its files, or a run folder
    (its latest checkpoint)."""
    p = Path(path)
    if p.is_file():
        if p.name == META or p.suffix == ".safetensors":
            return p.parent
        raise CheckpointError(f"{p}: not a sciffusion checkpoint (expected a folder with {META}; "
                              "pickled .pt/.ckpt files are never loaded)")
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint")
    if (p / META).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is not None:
        return latest
    raise CheckpointError(f"{p}: not a sciffusion checkpoint (no {META} and no checkpoints/step-* inside)")


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Open and validate a checkpoint: format, files present, sizes and hashes as recorded."""
    folder = resolve(path)
    meta_path = folder / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: corrupt checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a sciffusion checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"{meta_path}: corrupt checkpoint metadata ({problem})")
    for name, info in meta["files"].items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing checkpoint file")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{f}: truncated or altered ({f.stat().st_size} bytes, expected {info['bytes']})")
        if verify and sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{f}: content does not match its recorded sha256 (corrupt or altered)")
    return Checkpoint(folder, meta)


def meta_problem(meta: dict) -> str | None:
    """What makes a parsed checkpoint.json unusable (a key missing or of the wrong type, a file
    entry that is not a plain file name with its size and sha256), or None."""
    kinds = {"domain": str, "step": int, "hash": str, "files": dict, "config": dict, "data_config": dict}
    for key, kind in kinds.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            return f"'{key}' is {type(meta[key]).__name__}, expected {kind.__name__}"
    for key in ("domain", "step", "hash", "files"):
        if key not in meta:
            return f"no '{key}'"
    if meta["step"] < 0:
        return f"'step' is {meta['step']}"
    for name, info in meta["files"].items():
        if Path(name).name != name or name in ("", ".", ".."):
            return f"file entry {name!r} is not a plain file name"
        if not (isinstance(info, dict) and isinstance(info.get("bytes"), int) and not isinstance(info["bytes"], bool)
                and isinstance(info.get("sha256"), str)):
            return f"file entry {name!r} lacks its 'bytes' (an integer) or 'sha256' (a string)"
    return None


def check_domain(ckpt: Checkpoint, domain: str) -> None:
    if ckpt.domain != domain:
        raise CheckpointError(f"{ckpt.path}: checkpoint is for domain '{ckpt.domain}', not '{domain}'")


def load_weights(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load a state dict strictly, with an error that names the file and every mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{source}: weights do not fit the model ({', '.join(parts)})")
    module.load_state_dict(dict(tensors), strict=True)


# ----------------------------------------------------------------------------- run folders


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / META).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_run_checkpoint(run_dir: str | Path, step: int, keep_last: int = 3, **kwargs) -> Path:
    """Save ``step-XXXXXXXX`` under ``run_dir/checkpoints`` and keep only the newest ``keep_last``."""
    d = checkpoints_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    clean_checkpoints(run_dir)
    target = d / f"step-{step:08d}"
    if target.exists():  # the same step saved again (e.g. resumed exactly at a save point)
        remove_folder(target)
    path = save_checkpoint(target, **kwargs)
    if keep_last > 0:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            remove_folder(old)
    return path


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a kill midway leaves no half folder under its name: rename it to a
    temporary first (which ``remove_stale_temporaries`` cleans), then delete."""
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{time.monotonic_ns()}.tmp"
    os.replace(folder, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def clean_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove what a killed writer or pruner left in a run's checkpoint folder: temporaries, and
    step folders without their checkpoint.json (torn by an older pruner). Returns the removed folders."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    remove_stale_temporaries(d)
    torn = [p for p in d.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and not (p / META).is_file()]
    for p in torn:
        remove_folder(p)
    return torn


def export_model(ckpt: Checkpoint, folder: str | Path, prefer_ema: bool = True, *,
                 sample: Mapping[str, Any] | None = None, replace: bool = False) -> Path:
    """Write a weights-only copy (EMA weights as the model) for shipping or sharing; ``sample``
    updates the config's sample section (the defaults ``sciffusion sample`` will use). With
    ``replace`` an existing checkpoint at ``folder`` is swapped for the new one once it is complete."""
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("optimizer", "rng", "files", "hash", "format")}
    if sample:
        meta["config"] = {**meta.get("config", {}), "sample": {**meta.get("config", {}).get("sample", {}), **sample}}
    meta["exported_from"] = {"hash": ckpt.hash, "used_ema": prefer_ema and ckpt.has("ema.safetensors")}
    folder = Path(folder)
    if not (replace and folder.exists()):
        return save_checkpoint(folder, model=ckpt.weights(prefer_ema), meta=meta)
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder}: exists and is not a checkpoint; not replacing it")
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    fresh = folder.parent / f".{folder.name}.new-{stamp}.tmp"
    save_checkpoint(fresh, model=ckpt.weights(prefer_ema), meta=meta)
    old = folder.parent / f".{folder.name}.old-{stamp}.tmp"
    os.replace(folder, old)
    os.replace(fresh, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


