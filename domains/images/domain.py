"""The images domain: pixel-space diffusion of fixed-size images (a U-Net or a DiT), class-conditional
with classifier-free guidance, inpainting, SDEdit and SR3-style super-resolution, on a user's folder
(PNG / JPEG / TIFF / NPY / NPZ, labels from sub-folders) or built-in data (scikit-learn's digits by
default; scikit-image's pictures as patch datasets).

State per batch (dense): ``image`` (B, C, H, W) in [-1, 1]: the data's values mapped linearly from
the data config's ``range`` ([0, 1] for 8/16-bit files; the training set's min and max for raw
arrays). cond: ``{"label": (B,) int64}`` indices into ``label_names`` (index ``len(label_names)`` is
the null label) and/or ``{"lowres": (B, C, H, W)}`` (super-resolution: the low-resolution image
upsampled to the model's size); None for an unconditional model.

Objects (``decode`` / ``read``): dicts ``{"image": float32 (C, H, W) in [0, 1], "label_name": str |
None, "raw": data-unit values (raw-array data only), "seed", "source", "original"}`` where
``original`` is the file whose pixels the sample should reproduce (inpainting and super-resolution
of full-size originals), so ``evaluate`` scores PSNR and SSIM against it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core.domain import Batch, Domain
from ...core.io import InputError
from ...core.seeds import labels_for_seeds
from ...core.state import State
from . import edits
from .units import to_data, to_model
from .dataset import load_examples
from .tables import ImagesData, ImagesModel, ImagesSample

WEIGHTS_DIR = Path(__file__).parent / "weights"
FIELD = "image"


class ImagesDomain(Domain):
    name = "images"
    description = "Images in pixel space (U-Net or DiT; inpainting, SDEdit, super-resolution; digits or image folders)"
    file_suffix = ".png"

    def __init__(self):
        self._edits: dict[int, dict] = {}  # seed -> what its edit read (source, original), for write
        self._batch: "tuple[tuple[int, ...], edits.EditInputs] | None" = None  # the last batch's edit inputs

    def tables(self) -> dict:
        return {"model": ImagesModel, "data": ImagesData, "sample": ImagesSample}

    def defaults(self) -> dict:
        """The images recipe in the engine's tables (see bench/RESULTS.md, "images recipe study")."""
        return {
            "process": {"name": "rectified_flow"},
            "objective": {"prediction": "velocity", "condition_dropout": 0.1},
            "train": {"batch_size": 64, "lr": 5e-4, "steps": 20000, "warmup_steps": 200, "decay": "cosine",
                      "min_lr_ratio": 0.1, "ema_decay": 0.999, "grad_clip": 1.0, "bf16": False, "ckpt_every": 1000,
                      "log_every": 100},
            "sample": {"sampler": "dpmpp_2m", "grid": "uniform", "steps": 10, "batch_size": 256},
        }

    # ------------------------------------------------------------------ data
    def load_dataset(self, data_cfg: dict, split: str) -> list[dict]:
        return load_examples(data_cfg, split)

    def data_config(self, train_examples: Sequence[dict], cfg: dict) -> dict:
        """Shape, value range, bit depth and labels of the training images, and the data table
        (``metrics`` reloads the data from it to score samples against it)."""
        if not train_examples:
            raise InputError("images: the training split has no images")
        C, H, W = (int(v) for v in train_examples[0]["image"].shape)
        depths = {int(e.get("bit_depth", 8)) for e in train_examples}
        if 0 in depths:
            lo = float(min(float(np.min(e["image"])) for e in train_examples))
            hi = float(max(float(np.max(e["image"])) for e in train_examples))
            if not hi > lo:
                raise InputError(f"images: every training value equals {lo}; nothing to learn")
            value_range, depth = [lo, hi], 0
        else:
            value_range, depth = [0.0, 1.0], max(depths)
        sr = int(cfg["model"]["sr_factor"])
        if sr and (H % sr or W % sr):
            raise InputError(f"images: a x{sr} super-resolution model needs image sides divisible by {sr}, "
                             f"the data is {H} x {W}")
        labels = sorted({e["label"] for e in train_examples if e.get("label") is not None})
        if labels and any(e.get("label") is None for e in train_examples):
            raise InputError("images: some training images have a label and some do not")
        use = labels if (cfg["model"]["class_conditional"] and not sr and len(labels) > 1) else []
        counts = [sum(1 for e in train_examples if e.get("label") == n) for n in use]
        return {"channels": C, "height": H, "width": W, "bit_depth": depth, "range": value_range,
                "label_names": use, "label_counts": counts, "sr_factor": sr, "examples": len(train_examples),
                "data": dict(cfg["data"])}

    def collate(self, examples: Sequence[dict], data_config: dict) -> Batch:
        shape = self._shape(data_config)
        for e in examples:
            if tuple(e["image"].shape) != shape:
                raise InputError(f"{e.get('file', 'an image')}: shape {tuple(e['image'].shape)}, the model's is {shape}")
        x = to_model(torch.from_numpy(np.stack([e["image"] for e in examples]).astype(np.float32)), data_config)
        cond = {}
        names = data_config.get("label_names") or []
        if names:
            index = {n: i for i, n in enumerate(names)}
            try:
                cond["label"] = torch.tensor([index[e["label"]] for e in examples], dtype=torch.long)
            except KeyError as err:
                raise InputError(f"images: label {err.args[0]!r} is not one of the model's labels {names}") from None
        if int(data_config.get("sr_factor", 0)):
            cond["lowres"] = edits.degrade(x, int(data_config["sr_factor"]))
        return Batch(State.dense(**{FIELD: x}), cond or None)

    # ------------------------------------------------------------------ model
    def build_network(self, model_cfg: dict, data_config: dict, self_conditioning: bool = False) -> torch.nn.Module:
        from .networks import build_network

        C = int(data_config["channels"])
        return build_network(model_cfg, C, len(data_config.get("label_names") or []),
                             cond_channels=C if int(data_config.get("sr_factor", 0)) else 0,
                             self_conditioning=self_conditioning,
                             image_size=(int(data_config["height"]), int(data_config["width"])))

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        names = data_config.get("label_names") or []  # none for a super-resolution model (data_config)
        return {"label": len(names)} if names else None

    # ------------------------------------------------------------------ generation
    def sample_labels(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> list[int]:
        """Label index per seed: ``sample.label`` (an index or a name) for all; with -1 each seed's own
        draw from the training label counts (``core.seeds.labels_for_seeds``), except for an edit of
        a model that learnt the null label: that one (the edit is guided by the image alone)."""
        names = data_config.get("label_names") or []
        if _edit_with_null_label(cfg):
            return [len(names)] * len(seeds)
        return labels_for_seeds(cfg["sample"].get("label", -1), names, data_config.get("label_counts"), seeds, "images")

    def _shape(self, data_config: dict) -> tuple[int, int, int]:
        return int(data_config["channels"]), int(data_config["height"]), int(data_config["width"])

    def check_sample(self, cfg: dict, data_config: dict) -> None:
        """The edit's inputs exist and fit the model (every file of a folder, read one at a time), and
        a super-resolution model has its low-resolution input."""
        s = cfg["sample"]
        _require_lowres(s, data_config)
        if edits.edit_kind(s):
            edits.check_inputs(s, data_config, cfg["data"])
        if data_config.get("label_names") and float(s.get("guidance", 0)) > 0 and _edit_with_null_label(cfg):
            warnings.warn("images: an edit without sample.label uses the null label, so guidance changes nothing "
                          "(and doubles the network calls); give sample.label to guide towards a class", stacklevel=2)

    def _inputs(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> "edits.EditInputs":
        """The edit inputs of these seeds (template, constraint and start of one batch share one read)."""
        key = tuple(int(v) for v in seeds)
        if self._batch is None or self._batch[0] != key:
            got = edits.load_inputs(cfg["sample"], seeds, data_config, cfg["data"])
            self._edits.update(got.records)
            self._batch = (key, got)
        return self._batch[1]

    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        C, H, W = self._shape(data_config)
        n = len(seeds)
        s = cfg["sample"]
        _require_lowres(s, data_config)
        cond = {}
        names = data_config.get("label_names") or []
        if names:
            cond["label"] = torch.tensor(self.sample_labels(seeds, cfg, data_config), dtype=torch.long)
        if edits.edit_kind(s):
            got = self._inputs(seeds, cfg, data_config)
            if got.lowres is not None:
                cond["lowres"] = got.lowres
        x0 = State.dense(**{FIELD: torch.zeros(n, C, H, W)})
        return Batch(x0, cond or None)

    def constraint(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict):
        """Inpainting: every pixel outside the mask is pinned to the original (exactly, at the end)."""
        if edits.edit_kind(cfg["sample"]) != "inpaint":
            return None
        got = self._inputs(seeds, cfg, data_config)
        return State.dense(**{FIELD: got.images}), {FIELD: got.known}

    def start(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict):
        """SDEdit: the given images, started at t0 = ``sample.strength``."""
        if edits.edit_kind(cfg["sample"]) != "sdedit":
            return None
        return State.dense(**{FIELD: self._inputs(seeds, cfg, data_config).images}), float(cfg["sample"]["strength"])

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[dict]:
        x = x0[FIELD].detach().float().cpu().clamp(-1.0, 1.0)
        C, H, W = self._shape(data_config)
        if tuple(x.shape[1:]) != (C, H, W):
            raise InputError(f"images: samples of shape {tuple(x.shape[1:])}, the model's is {(C, H, W)}")
        names = data_config.get("label_names") or []
        labels = cond.get("label") if isinstance(cond, dict) else None
        raw = int(data_config.get("bit_depth", 8)) == 0
        out = []
        for i in range(x.shape[0]):
            lab = int(labels[i]) if labels is not None and 0 <= int(labels[i]) < len(names) else -1
            obj = {"image": ((x[i] + 1.0) * 0.5).numpy(), "label_name": names[lab] if lab >= 0 else None}
            if raw:
                obj["raw"] = to_data(x[i], data_config).numpy()
            out.append(obj)
        return out

    def write(self, objects: Sequence[dict], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        from ...core.io import atomic_path
        from .output import write_png

        depth = int(data_config.get("bit_depth", 8))
        paths = []
        for obj, seed in zip(objects, seeds):
            meta = {"seed": int(seed), "label": obj.get("label_name"), **self._edits.pop(int(seed), {})}
            path = Path(folder) / f"{int(seed):08d}.png"
            if "raw" in obj:  # the values in the data's units beside the PNG, which shows them
                meta.update(array=path.with_suffix(".npy").name, range=data_config["range"])
            write_png(path, obj["image"], 16 if depth in (0, 16) else 8, meta)
            if "raw" in obj:
                npy = path.with_suffix(".npy")
                with atomic_path(npy) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, np.asarray(obj["raw"], dtype=np.float32), allow_pickle=False)
                paths.append((path, npy))
            else:
                paths.append(path)
        return paths

    def run_picture(self, files: Sequence[Path], path: Path, cfg: dict, data_config: dict) -> Path | None:
        """grid.png: the run's first samples, captioned "seed: label" (``sample.grid_picture``)."""
        from .output import grid_png

        if not cfg["sample"].get("grid_picture", True):
            return None
        objs = [self.read(f) for f in files]
        return grid_png(path, [o["image"] for o in objs], [_caption(o, Path(f)) for o, f in zip(objs, files)])

    def report_item(self, path: Path, data_config: dict) -> dict | None:
        """The sample PNG itself (read first: a damaged file is an InputError), captioned "seed: label"."""
        return {"kind": "image", "path": path, "caption": _caption(self.read(path), path)}

    # ------------------------------------------------------------------ evaluation
    def read(self, path: Path) -> dict:
        """A PNG/JPEG/TIFF/NPY image as values in [0, 1] with sciffusion's metadata; a PNG that
        sciffusion wrote beside an array (raw data) stands for the array, scaled by its range."""
        from .data import read_image

        path = Path(path)
        img = read_image(path)
        meta = _png_metadata(path) if path.suffix.lower() == ".png" else {}
        image = img["image"]
        if meta.get("array") and (path.parent / str(meta["array"])).is_file():
            image = _array_in_unit_range(path.parent / str(meta["array"]), meta.get("range"))
        obj = {"image": image, "label_name": meta.get("label"), "seed": meta.get("seed"),
               "file": str(path), "source": meta.get("source"), "original": meta.get("original"),
               "original_sha256": meta.get("original_sha256"), "range": meta.get("range"),
               "bit_depth": img.get("bit_depth", 8)}
        if obj["label_name"] is not None:
            obj["label_name"] = str(obj["label_name"])
        return obj

    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        from .scoring import score

        return score(objects, data_config, reference)

    def evaluation_pictures(self, objects: Sequence[Any], metrics: dict, folder: Path, data_config: dict) -> list[Path]:
        """``pixel_values.png`` (samples against the training images) and, for a labelled model,
        ``per_class_accuracy.png`` (the evaluation classifier's accuracy per asked label)."""
        from ...core.pictures import class_accuracy_picture
        from .scoring import class_confusion, intensity_picture, reference_set

        try:
            reference = reference_set(data_config)  # read once for both pictures
        except (InputError, KeyError, OSError):
            reference = None
        out = [intensity_picture(objects, None if reference is None else reference[0], folder / "pixel_values.png")]
        per_class = class_confusion(objects, reference) if metrics.get("classifier") and reference else None
        if per_class is not None:
            out.append(class_accuracy_picture(folder / "per_class_accuracy.png", *per_class, item="image",
                                              title="the evaluation classifier on the samples"))
        return out

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        """The digits model shipped in the package (see weights/digits/MODEL_CARD.md)."""
        path = WEIGHTS_DIR / "digits"
        return path if (path / "checkpoint.json").is_file() else None


def _caption(obj: dict, path: Path) -> str:
    """"seed: label" of a sample image (the file's stem for a file without sciffusion's seed)."""
    seed, label = obj.get("seed"), obj.get("label_name")
    return f"{path.stem if seed is None else seed}" + (f": {label}" if label else "")


def _require_lowres(sample: dict, data_config: dict) -> None:
    """A super-resolution model samples only from low-resolution inputs (``sample.lowres``)."""
    sr = int(data_config.get("sr_factor", 0))
    if sr and not sample.get("lowres"):
        raise InputError(f"images: this is a x{sr} super-resolution model: set sample.lowres to the "
                         "low-resolution image(s) to upscale")


def _edit_with_null_label(cfg: dict) -> bool:
    """An edit without ``sample.label`` of a model that learnt the null label: it runs unconditioned."""
    s = cfg["sample"]
    return (bool(edits.edit_kind(s)) and str(s.get("label", -1)) in ("-1", "")
            and float(cfg["objective"]["condition_dropout"]) > 0)


def _array_in_unit_range(path: Path, value_range) -> np.ndarray:
    """A sample's array (data units) mapped to [0, 1] by the model's range."""
    from .data import read_image

    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise InputError(f"{path}: the PNG beside it records no valid value range ({value_range!r})") from None
    raw = read_image(path)["image"]
    return np.clip((raw - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _png_metadata(path: Path) -> dict:
    """sciffusion's JSON metadata of a PNG (its ``tEXt`` chunk), or {}."""
    from PIL import Image

    from .output import METADATA_KEY

    try:
        with Image.open(path) as im:
            text = im.text.get(METADATA_KEY) if hasattr(im, "text") else None
    except Exception:  # noqa: BLE001 - read_image has already judged the file; metadata is optional
        return {}
    try:
        meta = json.loads(text) if text else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}
