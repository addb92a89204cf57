"""The public Python API. Every CLI command is a thin wrapper over the function of the same name:

    sciffusion.domains()                      installed domains
    sciffusion.train(domain, config, out)     train a model (sciffusion.core.train)
    sciffusion.sample(model, out, n=...)      resumable batch generation (sciffusion.core.generate)
    sciffusion.generate(model, n=...)         samples in memory: tensors and domain objects, no files
    sciffusion.verify(model, out, n=...)      which seeds of a sample run are missing or damaged
    sciffusion.sample_config(model, ...)      the config a sample run would use
    sciffusion.evaluate(domain, paths)        score files written by sciffusion or any other tool
    sciffusion.info(checkpoint)               what a checkpoint holds
    sciffusion.export(checkpoint, out)        weights-only copy (EMA) to ship or share
    sciffusion.env()                          versions and devices, for bug reports
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from .core.checkpoint import load_checkpoint
from .core.domain import Domain, check_data_paths, resolve_config
from .core.io import InputError
from .core.registry import available, get_domain


def domains() -> list[dict]:
    """Installed domains: name, description, the distribution and version providing it, entry point."""
    out = []
    for d in available():
        try:
            desc = get_domain(d.name).description
        except InputError as e:
            desc = f"(failed to load: {e})"
        out.append({"name": d.name, "description": desc, "distribution": d.distribution,
                    "version": d.version, "entry_point": d.value})
    return out


def config(domain: str | Domain, config_file: str | Path | dict | None = None, overrides: Sequence[str] = (),
           *, check_paths: bool = True) -> dict:
    """The resolved, checked configuration of a run (engine defaults < domain defaults < file <
    overrides); with ``check_paths`` the data files it names must exist."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    cfg = resolve_config(dom, config_file, overrides)
    if check_paths:
        check_data_paths(dom, cfg)
    return cfg


def train(domain: str | Domain, config: dict | str | Path | None = None, out: str | Path = "runs/latest", *,
          overrides: Sequence[str] = (), device: str | None = None, resume: bool = True,
          progress: bool | None = None):
    """Train a model of ``domain``; see ``sciffusion.core.train.train``."""
    from .core.train import train as _train

    dom = get_domain(domain) if isinstance(domain, str) else domain
    cfg = resolve_config(dom, config, overrides)
    return _train(dom, cfg, out, device=device, resume=resume, progress=progress)


def sample(model: str | Path, out: str | Path, *, n: int | None = None, seeds: str | Sequence[int] | None = None,
           batch_size: int | None = None, sampler: str | None = None, steps: int | None = None,
           grid: str | None = None, guidance: float | None = None, overrides: Sequence[str] = (),
           device: str | None = None, progress: bool | None = None, overwrite: bool = False,
           part: str | None = None):
    """Generate one file per seed into ``out`` (resumable); see ``sciffusion.core.generate.sample``.
    ``model``: a checkpoint, a run folder or a domain name (its shipped model); ``n`` (seeds
    0..n-1) or ``seeds`` ("0-9999", "5,7,9", a list); the keyword options and ``overrides``
    (``sample.KEY=VALUE``) set the ``[sample]`` table."""
    from .core import generate

    return generate.sample(model, out, n=n, seeds=seeds, batch_size=batch_size, sampler=sampler, steps=steps,
                           grid=grid, guidance=guidance, overrides=overrides, device=device, progress=progress,
                           overwrite=overwrite, part=part)


def verify(model: str | Path, out: str | Path, *, n: int | None = None, seeds: str | Sequence[int] | None = None,
           overrides: Sequence[str] = ()) -> dict:
    """Which seeds of a ``sample`` run are missing or damaged in ``out`` (read-only); see
    ``sciffusion.core.generate.verify``."""
    from .core import generate

    return generate.verify(model, out, n=n, seeds=seeds, overrides=overrides)


def generate(model: str | Path, *, n: int | None = None, seeds: str | Sequence[int] | None = None,
             overrides: Sequence[str] = (), device: str | None = None):
    """Samples in memory (tensors in ``.x0``, domain objects in ``.objects``), no files; see
    ``sciffusion.core.generate.generate``."""
    from .core import generate as _generate

    return _generate.generate(model, n=n, seeds=seeds, overrides=overrides, device=device)


def sample_config(model: str | Path, *, batch_size: int | None = None, sampler: str | None = None,
                  steps: int | None = None, grid: str | None = None, guidance: float | None = None,
                  overrides: Sequence[str] = ()) -> dict:
    """The resolved config ``sample`` would use with these options (what ``--dry-run`` prints)."""
    from .core import generate

    return generate.sample_config(model, batch_size=batch_size, sampler=sampler, steps=steps, grid=grid,
                                  guidance=guidance, overrides=overrides)


def _domain_files(folder: Path, suffix: str) -> list[Path]:
    """The files of ``folder`` (recursively) a domain's reader should see: those with ``suffix`` in
    any case (``.WAV`` too), never the engine's own (manifest, run record, hidden folders such as
    .parts, temporaries)."""
    from .core.sample_folder import ENGINE_FILES, evaluation_files

    kept = set(evaluation_files(folder) or [])  # an evaluation's own record and pictures
    out = []
    for f in (f for f in folder.rglob("*") if f.name.lower().endswith(suffix.lower())):
        rel = f.relative_to(folder).parts
        if f.is_file() and not any(part.startswith(".") for part in rel) and not (len(rel) == 1 and f.name in ENGINE_FILES) \
                and f not in kept:
            out.append(f)
    return sorted(out)


def collect_files(paths: Sequence[str | Path], suffix: str) -> list[Path]:
    """Files named directly, plus the files with ``suffix`` inside named folders (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _domain_files(p, suffix)
            if not found:
                raise InputError(f"{p}: no {suffix or 'sample'} files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError("no files to evaluate")
    return files


def evaluate(domain: str | Domain, paths: Sequence[str | Path], *, checkpoint: str | Path | None = None,
             skip_bad: bool = False, out: str | Path | None = None, write: bool = True) -> dict[str, Any]:
    """Read every file (or every domain file inside folders) and compute the domain's metrics.

    ``checkpoint`` supplies the training data's facts (data config) where the metrics need them; for
    one samples folder it defaults to the checkpoint that wrote it (``run.json``), when still here.
    Bad files raise an error naming the file, or are skipped and counted with ``skip_bad``.
    ``write``: keep ``metrics.json`` and the domain's pictures (``core.evaluation``) in ``out``, by
    default ``FOLDER/evaluation`` when ``paths`` is one samples folder of ``sciffusion sample``
    (nothing is kept for other folders or loose files unless ``out`` is given; a default folder that
    cannot be written only warns)."""
    from .core.evaluation import samples_checkpoint

    dom = get_domain(domain) if isinstance(domain, str) else domain
    data_config = {}
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else samples_checkpoint(paths, dom.name)
    if ckpt is not None:
        if ckpt.domain != dom.name:
            raise InputError(f"{ckpt.path}: checkpoint is for domain '{ckpt.domain}', not '{dom.name}'")
        data_config = ckpt.data_config
        checkpoint = ckpt.path
    objects, skipped = [], []
    for f in collect_files(paths, dom.file_suffix):
        try:
            objects.append(dom.read(f))
        except InputError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if not objects:
        raise InputError(f"no readable files among {len(skipped)} ({skipped[0] if skipped else ''})")
    metrics = dict(dom.metrics(objects, data_config))
    metrics["files"] = len(objects)
    metrics["skipped"] = len(skipped)
    folder = evaluation_folder(paths, out) if write else None
    if folder is not None:
        from .core.evaluation import write_evaluation

        write_evaluation(dom, objects, metrics, folder, data_config, sources=paths,
                         checkpoint=None if checkpoint is None else str(checkpoint), must=out is not None)
    return metrics


def evaluation_folder(paths: Sequence[str | Path], out: str | Path | None = None) -> Path | None:
    """Where ``evaluate(paths, out=out)`` keeps its record and pictures (None: nowhere)."""
    from .core.evaluation import default_folder

    return Path(out) if out is not None else default_folder(paths)


def report(paths: Sequence[str | Path], out: str | Path | None = None, *, max_items: int = 24) -> Path:
    """One self-contained HTML page of samples folders and training run folders (``core.report``):
    metrics, pictures, players, 3D views, model card, config and provenance; written to ``out``
    (default: ``report.html`` in the first folder). Returns its path."""
    from .core.report import report as _report

    return _report(paths, out, max_items=max_items)


def info(checkpoint: str | Path) -> dict[str, Any]:
    """What a checkpoint holds: domain, step, hash, config, data config, recorded metrics, files.
    A domain name stands for the model that domain ships."""
    if not Path(checkpoint).exists() and str(checkpoint) in {d.name for d in available()}:
        shipped = get_domain(str(checkpoint)).default_checkpoint()
        if shipped is None:
            raise InputError(f"domain '{checkpoint}' ships no default model")
        checkpoint = shipped
    ckpt = load_checkpoint(checkpoint)
    weights = ckpt.weights(prefer_ema=False)
    return {
        "path": str(ckpt.path),
        "domain": ckpt.domain,
        "plugin": ckpt.meta.get("plugin"),
        "step": ckpt.step,
        "hash": ckpt.hash,
        "sciffusion_version": ckpt.meta.get("sciffusion_version"),
        "parameters": int(sum(v.numel() for v in weights.values())),
        "has_ema": ckpt.has("ema.safetensors"),
        "has_optimizer": "optimizer" in ckpt.meta,
        "files": {k: v["bytes"] for k, v in ckpt.meta.get("files", {}).items()},
        "metrics": ckpt.meta.get("metrics", {}),
        "config": ckpt.config,
        "data_config": ckpt.data_config,
    }


def export(checkpoint: str | Path, out: str | Path, *, overrides: Sequence[str] = (), replace: bool = False,
           prefer_ema: bool = True) -> dict[str, Any]:
    """A weights-only copy of a checkpoint (or of a run folder's latest one) at ``out``: the EMA
    weights as the model, no optimizer or RNG state. ``overrides`` (``sample.KEY=VALUE`` only) set the
    sampling defaults the copy carries; ``replace`` swaps out an existing checkpoint at ``out``."""
    from .core.checkpoint import export_model
    from .core.config import apply_overrides

    not_sample = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("sample.")]
    if not_sample:
        raise InputError(f"export: only sampling defaults (sample.KEY=VALUE) can be set, not {', '.join(not_sample)}: "
                         "the rest of the config describes how the weights were made")
    out = Path(out)
    if out.exists() and not replace:
        raise InputError(f"{out}: already exists (pass replace=True / --replace to swap it for the new export)")
    ckpt = load_checkpoint(checkpoint)
    sample = apply_overrides({}, overrides).get("sample", {})
    if sample:  # checked against the domain's [sample] table (unknown keys, types, the sampler's options)
        resolved = resolve_config(get_domain(ckpt.domain), overrides=overrides, base=ckpt.config,
                                  base_name=str(ckpt.path / "checkpoint.json"))
        sample = resolved["sample"]
    path = export_model(ckpt, out, prefer_ema, sample=sample, replace=replace)
    made = load_checkpoint(path, verify=False)  # just written and hashed by export_model
    return {"path": str(path), "step": made.step, "hash": made.hash, "source": str(ckpt.path),
            "used_ema": made.meta["exported_from"]["used_ema"], "sample": made.config.get("sample", {})}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def env() -> dict[str, Any]:
    """Versions, devices and installed domains, for bug reports."""
    import torch

    from . import __version__

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}"})
    return {
        "sciffusion": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": devices,
        "packages": {name: _version(name) for name in ("torchaudio", "torch-geometric", "e3nn", "rdkit", "numpy",
                                                       "safetensors", "soundfile", "typer", "diffusers")},
        "domains": [d.name for d in available()],
    }
