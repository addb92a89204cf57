"""What ``sciffusion evaluate`` keeps of an evaluation: ``metrics.json`` and the domain's pictures.

    evaluation/                    beside the samples (``core.sample_folder.EVALUATION``) by default
      metrics.json                 the metrics, the files scored, the checkpoint whose facts were used,
                                   and the pictures written with them
      atom_types.png ...           ``Domain.evaluation_pictures``: pictures that help read the numbers

Everything is written atomically; the pictures of an earlier evaluation are removed first, so the
folder never mixes two evaluations; a picture that fails to draw only warns (the numbers stand).
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from .domain import Domain
from .io import InputError, atomic_write_json
from .sample_folder import EVALUATION, EVALUATION_RECORD, RUN, record_files

def samples_folder(paths: Sequence[str | Path]) -> Path | None:
    """``paths`` as one samples folder of ``sciffusion sample`` (it holds a run record), else None."""
    return Path(paths[0]) if len(paths) == 1 and (Path(paths[0]) / RUN).is_file() else None


def default_folder(paths: Sequence[str | Path]) -> Path | None:
    """Where an evaluation of ``paths`` is kept unless told: beside the samples when ``paths`` is one
    samples folder (``FOLDER/evaluation``); None otherwise (a user's own folder, loose files,
    several folders)."""
    folder = samples_folder(paths)
    return None if folder is None else folder / EVALUATION


def samples_checkpoint(paths: Sequence[str | Path], domain: str):
    """The checkpoint that generated ``paths`` when they are one samples folder whose run record
    names a checkpoint of ``domain`` still readable here with the same hash (its data facts serve
    the metrics), else None; one that moved, changed or is of another domain is warned of."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .sample_folder import read_samples

    folder = samples_folder(paths)
    if folder is None:
        return None
    try:
        run, _ = read_samples(folder)
        ckpt = load_checkpoint(run["checkpoint"])
    except (InputError, CheckpointError, KeyError, OSError, TypeError):
        ckpt = None
    if ckpt is None or ckpt.hash != run.get("checkpoint_hash") or ckpt.domain != domain:
        warnings.warn(f"{folder}: the '{domain}' checkpoint that wrote these samples is not here as it was; the "
                      f"metrics that need its training-data facts are left out (give --checkpoint)")
        return None
    return ckpt


def write_evaluation(domain: Domain, objects: Sequence[Any], metrics: Mapping[str, Any], folder: str | Path,
                     data_config: dict, *, sources: Sequence[str | Path], checkpoint: str | None = None,
                     must: bool = True) -> list[Path]:
    """Write ``metrics.json`` and the domain's pictures of this evaluation into ``folder``; the paths.
    ``must``: a folder that cannot be written is an error (else a warning, and nothing is kept)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in record_files(folder) or []:  # an earlier evaluation's record and pictures
            old.unlink(missing_ok=True)
    except OSError as e:
        if must:
            raise InputError(f"{folder}: cannot keep the evaluation there ({e.strerror or e})") from None
        warnings.warn(f"{folder}: cannot keep the evaluation there ({e.strerror or e}); the metrics are printed only")
        return []
    try:
        pictures = [Path(p) for p in domain.evaluation_pictures(objects, metrics, folder, data_config)]
    except Exception as e:  # noqa: BLE001 - a picture must not lose the numbers
        warnings.warn(f"{folder}: the '{domain.name}' evaluation pictures failed ({type(e).__name__}: {e})")
        pictures = []
    record = {"domain": domain.name, "metrics": dict(metrics), "sources": [str(p) for p in sources],
              "checkpoint": checkpoint, "files": int(metrics.get("files", len(objects))),
              "pictures": [p.name for p in pictures if p.parent == folder],
              "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / EVALUATION_RECORD, record)
    return [folder / EVALUATION_RECORD] + pictures


def read_evaluation(folder: str | Path) -> dict | None:
    """The record ``write_evaluation`` left in ``folder``, or None when there is none."""
    path = Path(folder) / EVALUATION_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable evaluation record ({e}); run `sciffusion evaluate` again") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise InputError(f"{path}: not an evaluation record (no 'metrics' table); run `sciffusion evaluate` again")
    return record
