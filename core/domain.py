"""The Domain contract: what a backend (built in or a third party's package) tells the engine.

A domain knows its data; the engine knows noise, time, training and generation. Subclass
``Domain``, implement the abstract methods, and register the class under the entry-point group
``sciffusion.domains`` in your package's pyproject:

    [project.entry-points."sciffusion.domains"]
    points2d = "my_package:PointsDomain"

Lifecycle
- training: ``load_dataset(cfg["data"], split)`` -> examples; ``data_config(train_examples, cfg)``
  -> JSON facts from the training data (element set, normalisation, size prior...), saved in every
  checkpoint; ``collate(examples, data_config)`` -> ``Batch(x0: State, cond)``;
  ``build_denoiser(cfg, data_config)`` -> ``Denoiser``; ``build_objective(cfg)``.
- generation: ``template(seeds, cfg, data_config)`` -> the shape of the batch to generate (a
  ``Batch`` whose x0 values are ignored; sizes drawn from each seed alone); optionally
  ``constraint(batch, seeds, cfg, data_config)`` -> known entries to pin (inpainting); a sampler produces x0;
  ``decode(x0, cond, data_config)`` -> domain objects; ``write(objects, seeds, folder, ...)`` -> files.
- evaluation: ``read(path)`` -> object; ``metrics(objects, data_config)`` -> {name: float}.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import deep_merge
from .io import InputError
from .objectives import DiffusionObjective
from .parameterisation import Denoiser, EDMPreconditioning
from .process import Process, process_from_config
from .state import State

ENGINE_DEFAULTS: dict = {
    "process": {"name": "vp_cosine"},
    "objective": {"prediction": "eps", "weighting": "uniform", "time_sampler": "uniform", "t_min": 1e-3,
                  "condition_dropout": 0.0, "edm_preconditioning": False, "sigma_data": 0.5},
    "train": {
        "steps": 1000, "batch_size": 64, "lr": 1e-4, "weight_decay": 1e-12, "betas": [0.9, 0.999],
        "warmup_steps": 0, "decay": "none", "min_lr_ratio": 0.0, "ema_decay": 0.999, "ema_warmup": 10,
        "grad_clip": 0.0, "adaptive_clip": False, "adaptive_clip_window": 50, "adaptive_clip_start": 10,
        "ddp_find_unused": "auto", "grad_accum": 1, "bf16": True, "compile": False,
        "seed": 0, "log_every": 50, "val_every": 0, "val_batches": 4, "sample_every": 0, "sample_n": 64,
        "ckpt_every": 500, "keep_last": 3, "max_bad_steps": 20, "num_workers": 0,
    },
    "sample": {"sampler": "dpmpp_2m", "steps": 50, "grid": "karras", "batch_size": 256, "guidance": 0.0,
               "shard_size": 100, "use_ema": True},
}


@dataclass
class Batch:
    """What ``collate`` returns: the clean state and the per-example condition (or None)."""

    x0: State
    cond: Any = None

    def to(self, device) -> "Batch":
        cond = self.cond
        if isinstance(cond, torch.Tensor):
            cond = cond.to(device)
        elif isinstance(cond, dict):
            cond = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()}
        return Batch(self.x0.to(device), cond)


class Domain(abc.ABC):
    """Base class of every domain backend."""

    name: str = ""
    description: str = ""
    file_suffix: str = ""

    # ------------------------------------------------------------------ configuration
    def defaults(self) -> dict:
        """Domain-specific defaults; merged over ``ENGINE_DEFAULTS`` by :meth:`default_config`."""
        return {}

    def default_config(self) -> dict:
        return deep_merge(deep_merge(ENGINE_DEFAULTS, {"domain": self.name}), self.defaults())

    # ------------------------------------------------------------------ data
    @abc.abstractmethod
    def load_dataset(self, data_cfg: dict, split: str) -> Sequence[Any]:
        """Examples of a split ("train", "valid", "test") from the files named in ``data_cfg``.
        Bad files raise ``InputError`` naming the file and the problem."""

    def data_config(self, train_examples: Sequence[Any], cfg: dict) -> dict:
        """JSON-serialisable facts derived from the training data, stored in checkpoints."""
        return {}

    @abc.abstractmethod
    def collate(self, examples: Sequence[Any], data_config: dict) -> Batch:
        """Stack examples into a batch."""

    # ------------------------------------------------------------------ model
    @abc.abstractmethod
    def build_network(self, model_cfg: dict, data_config: dict) -> torch.nn.Module:
        """The network: ``forward(x: State, t: Tensor(B,), cond) -> State`` of raw predictions."""

    def build_process(self, cfg: dict) -> Process:
        return process_from_config(cfg["process"])

    def build_denoiser(self, cfg: dict, data_config: dict) -> Denoiser:
        obj = cfg["objective"]
        pre = EDMPreconditioning(obj.get("sigma_data", 0.5)) if obj.get("edm_preconditioning") else None
        return Denoiser(self.build_network(cfg.get("model", {}), data_config), self.build_process(cfg),
                        prediction="x0" if pre is not None else obj.get("prediction", "eps"), preconditioning=pre)

    def build_objective(self, cfg: dict) -> DiffusionObjective:
        obj = cfg["objective"]
        pre = bool(obj.get("edm_preconditioning"))
        return DiffusionObjective(
            self.build_process(cfg),
            prediction="x0" if pre else obj.get("prediction", "eps"),
            weighting=obj.get("weighting", "uniform"),
            min_snr_gamma=obj.get("min_snr_gamma", 5.0),
            sigma_data=obj.get("sigma_data", 0.5),
            time_sampler=obj.get("time_sampler", "uniform"),
            t_min=obj.get("t_min", 1e-3),
            timesteps=obj.get("timesteps", 1000),
            field_weights=obj.get("field_weights"),
        )

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        """Values that stand for "no condition" (classifier-free guidance); None if unconditional."""
        return None

    # ------------------------------------------------------------------ generation
    @abc.abstractmethod
    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        """The batch to generate for these seeds (sizes from each seed alone; values ignored)."""

    def constraint(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict) -> "tuple[State, dict] | None":
        """Entries to pin while sampling this batch (inpainting): ``(known, mask)`` with ``known`` a
        state like ``batch.x0`` and ``mask`` field -> bool tensor, True where the value is known; the
        engine keeps them at the known data noised to the current time and exactly at the end
        (``core.guidance.Inpaint``). None (the default): nothing is pinned."""
        return None

    @abc.abstractmethod
    def decode(self, x0: State, cond: Any, data_config: dict) -> list[Any]:
        """Generated states to domain objects, one per example."""

    @abc.abstractmethod
    def write(self, objects: Sequence[Any], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        """Write one file per object into ``folder`` (atomically), named by seed; return the paths, one
        per object: a path, or a sequence whose first path is the sample and the rest its companions
        (e.g. a picture), which the manifest lists with it."""

    # ------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def read(self, path: Path) -> Any:
        """Read one file written by this domain or another tool; ``InputError`` on bad input."""

    @abc.abstractmethod
    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """Quality metrics of a set of objects (against reference data where given)."""

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        """The folder of the model shipped with the domain, if any."""
        return None


def resolve_config(domain: Domain, config: "str | Path | dict | None" = None, overrides: Sequence[str] = ()) -> dict:
    """The full configuration of a run: engine defaults, then the domain's defaults, then a TOML
    file (or dict), then dotted command-line overrides."""
    from .config import apply_overrides, load_toml

    cfg = domain.default_config()
    if config is not None:
        user = load_toml(config) if not isinstance(config, dict) else config
        if "domain" in user and user["domain"] != domain.name:
            raise ValueError(f"config is for domain '{user['domain']}', not '{domain.name}'")
        cfg = deep_merge(cfg, user)
    cfg = apply_overrides(cfg, overrides)
    cfg["domain"] = domain.name
    return cfg


def denoiser_from_checkpoint(domain: Domain, ckpt, cfg: dict | None = None, *, prefer_ema: bool = True,
                             device="cpu") -> Denoiser:
    """Rebuild a checkpoint's denoiser with its (EMA) network weights, in eval mode on ``device``.
    ``cfg`` overrides the checkpoint's config (e.g. sampling options); the model part must match."""
    from .checkpoint import CheckpointError, load_weights

    try:
        den = domain.build_denoiser(ckpt.config if cfg is None else cfg, ckpt.data_config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: cannot build the '{domain.name}' model from the checkpoint's config "
                              f"({type(e).__name__}: {e})") from None
    name = "ema.safetensors" if prefer_ema and ckpt.has("ema.safetensors") else "model.safetensors"
    load_weights(den.network, ckpt.tensors(name), ckpt.path / name)
    return den.to(device).eval()


def pick_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """The torch device for a run: ``device`` (cpu, cuda, cuda:1 ...) or CUDA when available; under
    torchrun a bare "cuda" means this process's LOCAL_RANK GPU. Selects the CUDA device it returns."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{device}' (try cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}' asked for, but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise InputError(f"device '{dev}' asked for, but there are {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(dev)
    return dev
