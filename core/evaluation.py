"""What ``sciffusion evaluate`` keeps of an evaluation: ``metrics.json`` and the domain's pictures.

    evaluation/                    beside the samples (``core.sample_folder.EVALUATION``) by default
      metrics.json                 the metrics, the files scored, the checkpoint whose facts were used
      atom_types.png ...           ``Domain.evaluation_pictures``: pictures that help read the numbers

Everything is written atomically; a picture that fails to draw only warns (the numbers stand).
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from .domain import Domain
from .io import InputError, atomic_write_json
from .sample_folder import EVALUATION, RUN

METRICS = "metrics.json"


def default_folder(paths: Sequence[str | Path]) -> Path | None:
    """Where an evaluation of ``paths`` is kept unless told: beside the samples when ``paths`` is one
    folder (``FOLDER/evaluation``); None otherwise (files, or several folders)."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / EVALUATION
    return None


def samples_checkpoint(paths: Sequence[str | Path]):
    """The checkpoint that generated ``paths`` when they are one samples folder whose run record
    names a checkpoint still readable here with the same hash (its data facts serve the metrics),
    else None; a checkpoint that moved or changed is warned of."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .sample_folder import read_samples

    if len(paths) != 1 or not (Path(paths[0]) / RUN).is_file():
        return None
    try:
        run, _ = read_samples(Path(paths[0]))
        ckpt = load_checkpoint(run["checkpoint"])
    except (InputError, CheckpointError, KeyError, OSError, TypeError):
        ckpt = None
    if ckpt is None or ckpt.hash != run.get("checkpoint_hash"):
        warnings.warn(f"{paths[0]}: the checkpoint that wrote these samples is not here as it was; the metrics "
                      f"that need its training-data facts are left out (give --checkpoint)")
        return None
    return ckpt


def write_evaluation(domain: Domain, objects: Sequence[Any], metrics: Mapping[str, Any], folder: str | Path,
                     data_config: dict, *, sources: Sequence[str | Path], checkpoint: str | None = None) -> list[Path]:
    """Write ``metrics.json`` and the domain's pictures of this evaluation into ``folder``; the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"domain": domain.name, "metrics": dict(metrics), "sources": [str(p) for p in sources],
              "checkpoint": checkpoint, "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / METRICS, record)
    written = [folder / METRICS]
    try:
        written += [Path(p) for p in domain.evaluation_pictures(objects, metrics, folder, data_config)]
    except Exception as e:  # noqa: BLE001 - a picture must not lose the numbers
        warnings.warn(f"{folder}: the '{domain.name}' evaluation pictures failed ({type(e).__name__}: {e})")
    return written


def read_evaluation(folder: str | Path) -> dict | None:
    """The record ``write_evaluation`` left in ``folder``, or None when there is none."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable evaluation record ({e}); run `sciffusion evaluate` again") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise InputError(f"{path}: not an evaluation record (no 'metrics' table); run `sciffusion evaluate` again")
    return record
