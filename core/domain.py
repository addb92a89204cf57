"""The Domain contract: what a backend (built in or a third party's package) tells the engine.

A domain knows its data; the engine knows noise, time, training and generation. Subclass
``Domain``, implement the abstract methods, and register the class under the entry-point group
``sciffusion.domains`` in your package's pyproject:

    [project.entry-points."sciffusion.domains"]
    points2d = "my_package:PointsDomain"

Lifecycle
- configuration: ``tables()`` -> the schemas of the domain's ``model`` and ``data`` tables (and
  extra ``sample`` keys); ``defaults()`` -> the domain's own values for any table (its process,
  objective, training and sampling choices). ``config_schema(domain)`` and ``resolve_config``
  check every run's config against these: unknown keys are errors.
- training: ``load_dataset(cfg["data"], split)`` -> examples; ``data_config(train_examples, cfg)``
  -> JSON facts from the training data (element set, normalisation, size prior...), saved in every
  checkpoint; ``collate(examples, data_config)`` -> ``Batch(x0: State, cond)``;
  ``build_denoiser(cfg, data_config)`` -> ``Denoiser``; ``build_objective(cfg)``.
- generation: ``template(seeds, cfg, data_config)`` -> the shape of the batch to generate (a
  ``Batch`` whose x0 values are ignored; sizes drawn from each seed alone); optionally
  ``constraint(batch, seeds, cfg, data_config)`` -> known entries to pin (inpainting); optionally
  ``start(batch, seeds, cfg, data_config)`` -> a state to edit and its start time (SDEdit); a sampler produces x0;
  ``decode(x0, cond, data_config)`` -> domain objects; ``write(objects, seeds, folder, ...)`` -> files;
  optionally ``run_picture(files, path, cfg, data_config)`` -> one picture of the run.
- evaluation: ``read(path)`` -> object; ``metrics(objects, data_config, reference=None)`` -> {name: float};
  optionally ``evaluation_pictures(objects, metrics, folder, data_config)`` -> pictures beside the numbers.
- report: optionally ``report_item(path, data_config)`` -> what ``sciffusion report`` shows of one
  sample file (a picture, a playable clip or a 3D structure; see ``core.report``).

Rules the engine relies on
- A condition is None or a dict of tensors whose first dimension is the batch (condition dropout
  and guidance replace entries example by example with ``null_condition``'s values).
- A sample depends on its seed alone: the network must not mix examples of a batch, and a padded
  (dense + mask) field's output must not depend on the padding (``core.checks`` tests it).
"""

from __future__ import annotations

import abc
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .config import load_toml, overrides_layer, resolve
from .schema import Table, specs_of_defaults, table_from_defaults
from .io import InputError
from .objectives import DiffusionObjective, ObjectiveConfig, parameterisation_of
from .parameterisation import Denoiser, EpsPrediction
from .process import Process, ProcessConfig, process_from_config
from .sampling import SampleConfig
from .state import State
from .train_config import TrainConfig

#: the engine's tables; a domain adds "model" and "data" (and may extend "sample")
ENGINE_TABLES: dict[str, type[Table]] = {"process": ProcessConfig, "objective": ObjectiveConfig,
                                         "train": TrainConfig, "sample": SampleConfig}
#: eps-prediction is warned of when x0 = (x - sigma eps)/alpha amplifies the network's error by more
#: than this at t = 1 (sigma~(1) = sigma/alpha: vp_cosine's is 1808, EDM's polynomial schedule's 316)
EPS_GAIN_WARNING = 1000.0
#: how many samples (the first, in seed order) a run picture shows at most
RUN_PICTURE_SAMPLES = 64


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

    name: str = ""  # the registry name (set from the entry point when left empty)
    description: str = ""  # one line for `sciffusion domains`
    file_suffix: str = ""  # the suffix of the files `write` makes and `evaluate` reads in folders (".sdf")

    # ------------------------------------------------------------------ configuration
    def tables(self) -> dict[str, type[Table]]:
        """Schemas of the domain's own tables: ``"model"`` and ``"data"`` (``core.config.Table``
        dataclasses), and ``"sample"`` (a subclass of ``core.sampling.SampleConfig`` that adds the
        domain's sample keys). A table left out is read off :meth:`defaults`: its keys are that
        table's keys there, each typed like its default."""
        return {}

    def defaults(self) -> dict:
        """The domain's own values, table by table, over the schemas' defaults (its process,
        objective, training and sampling choices; its model and data defaults)."""
        return {}

    def default_config(self) -> dict:
        """The complete config of a run with nothing else given."""
        return resolve_config(self)

    # ------------------------------------------------------------------ data
    @abc.abstractmethod
    def load_dataset(self, data_cfg: dict, split: str) -> Sequence[Any]:
        """Examples of a split ("train", "valid", "test") from the files named in ``data_cfg``.
        Bad files raise ``InputError`` naming the file and the problem."""

    def data_paths(self, data_cfg: dict) -> list[Path]:
        """The files or folders a ``[data]`` table names, which must exist before training starts
        (checked by ``train`` and ``--dry-run``). Default: ``data.path`` when the table has one."""
        path = data_cfg.get("path")
        return [Path(path)] if isinstance(path, str) and path else []

    def data_config(self, train_examples: Sequence[Any], cfg: dict) -> dict:
        """JSON-serialisable facts derived from the training data, stored in checkpoints."""
        return {}

    @abc.abstractmethod
    def collate(self, examples: Sequence[Any], data_config: dict) -> Batch:
        """Stack examples into a batch."""

    # ------------------------------------------------------------------ model
    @abc.abstractmethod
    def build_network(self, model_cfg: dict, data_config: dict) -> torch.nn.Module:
        """The network: ``forward(x: State, c_noise: Tensor(B,), cond) -> State`` of raw outputs F,
        one per field of ``x``, each shaped like it (see ``core.parameterisation``). A network
        that can be self-conditioned takes a keyword ``self_conditioning=True`` and then finds the
        x0 estimate in its input as fields ``"sc:<name>"``."""

    def build_process(self, cfg: dict) -> Process:
        return process_from_config(cfg["process"])

    def build_denoiser(self, cfg: dict, data_config: dict) -> Denoiser:
        process = self.build_process(cfg)
        p = parameterisation_of(cfg["objective"])
        gain = float(process.sigma_tilde(torch.ones((), dtype=torch.float64)))
        if isinstance(p, EpsPrediction) and gain > EPS_GAIN_WARNING:
            warnings.warn(f"domain '{self.name}': eps-prediction with process '{process.name}', whose sigma/alpha "
                          f"reaches {gain:.0f} at t = 1: x0 = (x - sigma eps)/alpha amplifies the network's error by "
                          "that much near the prior, so few-step samplers give values far out of range; prefer "
                          "objective.prediction = \"v\" (or \"x0\", or EDM preconditioning)", stacklevel=2)
        self_cond = float(cfg["objective"]["self_conditioning"]) > 0
        if self_cond and "self_conditioning" not in inspect.signature(self.build_network).parameters:
            raise InputError(f"domain '{self.name}': objective.self_conditioning > 0 needs a network that takes an x0 "
                             "estimate as input: build_network(model_cfg, data_config, self_conditioning=True)")
        extra = {"self_conditioning": True} if self_cond else {}
        return Denoiser(self.build_network(cfg["model"], data_config, **extra), process, p,
                        self_conditioning=self_cond)

    def build_objective(self, cfg: dict) -> DiffusionObjective:
        return DiffusionObjective.from_config(cfg["objective"])

    def align_noise(self, x0: State, eps: State, cfg: dict) -> State:
        """The training noise paired with each example, given its data (a coupling of data and
        prior, e.g. the optimal rotation and permutation of point sets for flow matching). It must
        keep the noise's law (rotate or permute it within what the data leaves exchangeable) and
        depend on each example alone. Default: the noise as drawn."""
        return eps

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        """Values that stand for "no condition" (classifier-free guidance), one per key of the
        condition dict; None if the domain is unconditional."""
        return None

    # ------------------------------------------------------------------ generation
    def check_sample(self, cfg: dict, data_config: dict) -> None:
        """Raise ``InputError`` when this model cannot run a generation config (the files its
        ``sample`` table names are missing or do not fit the model): called before anything is
        written to the output folder. Default: nothing to check."""

    @abc.abstractmethod
    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        """The batch to generate for these seeds (sizes from each seed alone; values ignored)."""

    def constraint(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict) -> "tuple[State, dict] | None":
        """Entries to pin while sampling this batch (inpainting): ``(known, mask)`` with ``known`` a
        state like ``batch.x0`` and ``mask`` field -> bool tensor, True where the value is known; the
        engine keeps them at the known data noised to the current time and exactly at the end
        (``core.guidance.Inpaint``). None (the default): nothing is pinned."""
        return None

    def start(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict) -> "tuple[State, float] | None":
        """SDEdit (Meng et al. 2022): ``(given, t0)``, a state like ``batch.x0`` to edit and the start
        time t0 in (0, 1]; the engine starts the sampler from ``given`` noised to t0
        (``core.guidance.sdedit_start``) on the part of the time grid at or below t0. None (the
        default): sampling starts from the prior."""
        return None

    @abc.abstractmethod
    def decode(self, x0: State, cond: Any, data_config: dict) -> list[Any]:
        """Generated states to domain objects, one per example."""

    @abc.abstractmethod
    def write(self, objects: Sequence[Any], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        """Write one file per object into ``folder`` (atomically), named by seed; return the paths, one
        per object: a path, or a sequence whose first path is the sample and the rest its companions
        (e.g. a picture), which the manifest lists with it."""

    def run_picture(self, files: Sequence[Path], path: Path, cfg: dict, data_config: dict) -> Path | None:
        """A picture of a whole generation run (e.g. a grid of samples), written atomically to
        ``path`` once the run's manifest is complete; ``files`` are the first samples' files in seed
        order (at most ``RUN_PICTURE_SAMPLES``), ``cfg`` the run's config. None (the default): no picture."""
        return None

    def report_item(self, path: Path, data_config: dict) -> "dict | None":
        """What ``sciffusion report`` shows of one sample file ``path``, as one of the report's kinds
        (``core.report.ITEM_KINDS``), each with an optional "caption" (str):

        - ``{"kind": "image", "path": png}``: a picture;
        - ``{"kind": "audio", "path": wav, "picture": png or None}``: a player (and its picture);
        - ``{"kind": "molecule", "atoms": [[symbol, x, y, z], ...], "bonds": [[i, j, order], ...]}``:
          an interactive 3D view (coordinates in angstrom, atoms counted from 0, order 1, 2, 3 or 1.5).

        None (the default): the sample is listed by name only."""
        return None

    # ------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def read(self, path: Path) -> Any:
        """Read one file written by this domain or another tool; ``InputError`` on bad input."""

    @abc.abstractmethod
    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """Quality metrics of a set of objects. ``reference`` is a set of objects to compare with
        (held-out data) when a caller has one; ``sciffusion evaluate`` passes none, so metrics that
        need a reference must find it themselves (e.g. from ``data_config``) or be left out."""

    def evaluation_pictures(self, objects: Sequence[Any], metrics: Mapping[str, Any], folder: Path,
                            data_config: dict) -> list[Path]:
        """Pictures that help read an evaluation's numbers (e.g. distributions against the reference
        data), written atomically into ``folder`` (which exists) as PNG; ``metrics`` are what
        ``metrics`` returned for ``objects``. Return the paths written. [] (the default): none."""
        return []

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        """The folder of the model shipped with the domain, if any."""
        return None


def config_schema(domain: Domain) -> dict[str, type[Table]]:
    """Every table of ``domain``'s runs: the engine's and the domain's own (see ``Domain.tables``)."""
    own = dict(domain.tables())
    defaults = domain.defaults()
    schema = {name: own.pop(name, None) or table_from_defaults(name, defaults.get(name, {}))
              for name in ("data", "model")}
    schema.update(ENGINE_TABLES)
    sample = own.pop("sample", None)
    if sample is None:
        extra = {k: v for k, v in (defaults.get("sample") or {}).items() if k not in SampleConfig.fields()}
        sample = _sample_table_with(extra) if extra else SampleConfig
    elif not issubclass(sample, SampleConfig):
        raise TypeError(f"domain '{domain.name}': tables()['sample'] must subclass core.sampling.SampleConfig")
    schema["sample"] = sample
    if own:
        raise TypeError(f"domain '{domain.name}': tables() may give model, data and sample, not {sorted(own)}")
    return schema


def _sample_table_with(extra: Mapping[str, Any]) -> type[SampleConfig]:
    specs = specs_of_defaults(extra)

    class DomainSampleConfig(SampleConfig):
        @classmethod
        def fields(cls):
            return {**SampleConfig.fields(), **specs}

    return DomainSampleConfig


def check_data_paths(domain: Domain, cfg: Mapping) -> None:
    """InputError naming the first path of the ``[data]`` table that does not exist."""
    for path in domain.data_paths(cfg["data"]):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder (data.path of the '{domain.name}' config)")


def resolve_config(domain: Domain, config: "str | Path | Mapping | None" = None, overrides: Sequence[str] = (),
                   *, base: "Mapping | None" = None, base_name: str = "") -> dict:
    """The full, checked configuration of a run: the schemas' defaults, then the domain's
    defaults, then ``base`` (e.g. a checkpoint's config), then a TOML file (or dict), then dotted
    command-line overrides. Errors name the layer (file) that set the bad key."""
    layers: list = [(f"domain '{domain.name}' defaults", domain.defaults())]
    if base is not None:
        layers.append((base_name or "the stored config", base))
    if config is not None:
        if isinstance(config, Mapping):
            layers.append(("the given config", config))
        else:
            layers.append((str(config), load_toml(config)))
    if overrides:
        layers.append(("command line", overrides_layer(overrides)))
    return resolve(config_schema(domain), layers, domain=domain.name)


def denoiser_from_checkpoint(domain: Domain, ckpt, cfg: dict | None = None, *, prefer_ema: bool = True,
                             device="cpu") -> Denoiser:
    """Rebuild a checkpoint's denoiser with its (EMA) network weights, in eval mode on ``device``.
    ``cfg`` overrides the checkpoint's config (e.g. sampling options); the model part must match.
    Without it the checkpoint's own config is used, completed with today's defaults."""
    from .checkpoint import CheckpointError, load_weights

    if cfg is None:
        cfg = resolve_config(domain, base=ckpt.config, base_name=str(ckpt.path / "checkpoint.json"))
    try:
        den = domain.build_denoiser(cfg, ckpt.data_config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: cannot build the '{domain.name}' model from the checkpoint's config "
                              f"({type(e).__name__}: {e})") from None
    name = "ema.safetensors" if prefer_ema and ckpt.has("ema.safetensors") else "model.safetensors"
    load_weights(den.network, ckpt.tensors(name), ckpt.path / name)
    return den.to(device).eval()
