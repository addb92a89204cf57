"""Editing images through the core's constraints and conditioning.

- Inpainting (``sample.inpaint`` + ``sample.mask`` or ``sample.mask_box``): the pixels outside the
  mask are pinned to the original by ``core.guidance.Inpaint`` (replacement for every sampler; with
  ``sample.sampler = "repaint"``, RePaint's resampling): noised to the current time at every step and
  set exactly at the end, so they come out equal to the original's pixels.
- SDEdit (``sample.sdedit`` + ``sample.strength`` = t0): the image noised to t0, then sampled on the
  time grid's part below t0 (``Domain.start``).
- Super-resolution (a model with ``model.sr_factor`` = 2 or 4, ``sample.lowres``): SR3's conditioning
  (Saharia et al. 2021): the low-resolution image, upsampled bicubically to the model's size, is
  concatenated to the network's input. Training pairs come from ``degrade`` (box downsampling by
  the factor, then the same bicubic upsampling). An input of the model's full size is taken to be an
  original: it is downsampled first and recorded, so ``evaluate`` scores PSNR and SSIM against it.

Each of ``inpaint``, ``sdedit`` and ``lowres`` names an image file or a folder of them; seed k edits
the folder's k-th image (sorted, cycling), so ``--seeds 0-99`` over a folder of 100 images edits
each image once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...core.io import InputError

__all__ = ["EDITS", "edit_kind", "input_files", "downsample", "upsample", "degrade", "hole_mask", "load_inputs",
           "EditInputs"]

EDITS = ("inpaint", "sdedit", "lowres")


def edit_kind(sample: dict) -> str | None:
    """Which edit a ``[sample]`` table asks for, or None."""
    for k in EDITS:
        if sample.get(k):
            return k
    return None


def input_files(spec: str, key: str) -> list[Path]:
    """The image files a ``sample.<key>`` value names: one file, or a folder's images (sorted)."""
    from .data import IMAGE_EXTENSIONS, list_image_files

    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise InputError(f"{path}: sample.{key} names a folder without images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise InputError(f"{path}: sample.{key} names no such file or folder")


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Box downsampling by ``factor``: each low-resolution pixel is the mean of a factor x factor block."""
    return F.avg_pool2d(x, factor)


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling to ``size`` (clamped to [-1, 1]): SR3's conditioning image."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def degrade(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The conditioning of a training pair: ``upsample(downsample(x))`` at x's size."""
    return upsample(downsample(x, factor), tuple(x.shape[-2:]))


def hole_mask(sample: dict, size: tuple[int, int]) -> torch.Tensor:
    """The pixels to regenerate, (H, W) bool: the mask image's nonzero pixels, or the mask box."""
    from .data import read_image

    H, W = size
    if sample.get("mask_box"):
        top, left, h, w = (int(v) for v in sample["mask_box"])
        if h < 1 or w < 1 or top + h > H or left + w > W:
            raise InputError(f"images: sample.mask_box = {[top, left, h, w]} does not fit in the model's {H} x {W} "
                             "images (and needs height, width >= 1)")
        hole = torch.zeros(H, W, dtype=torch.bool)
        hole[top:top + h, left:left + w] = True
        return hole
    path = Path(str(sample["mask"])).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: sample.mask names no such file")
    m = read_image(path)["image"]
    if tuple(m.shape[1:]) != (H, W):
        raise InputError(f"{path}: the mask is {m.shape[1]} x {m.shape[2]}, the model's images are {H} x {W}")
    hole = torch.from_numpy(np.asarray(m).max(axis=0) > 0)
    if not bool(hole.any()):
        raise InputError(f"{path}: the mask has no nonzero pixel (nonzero = regenerate): nothing to inpaint")
    return hole


@dataclass
class EditInputs:
    """One batch's edit inputs: model-space images (B, C, H, W), the known-pixel mask (inpainting),
    the upsampled low-resolution conditioning (super-resolution), and per seed what the sample's
    metadata records (its source file, and the original to score it against)."""

    images: torch.Tensor
    known: torch.Tensor | None = None
    lowres: torch.Tensor | None = None
    records: dict[int, dict] = field(default_factory=dict)


def model_space(path: Path, data_config: dict, *, alpha: str = "drop", max_pixels: int = 50_000_000) -> torch.Tensor:
    """An image file in the model's units (C, H, W): its channels converted to the model's, its values
    mapped by the model's range. A raw array for a model of 8/16-bit images (or the reverse) is refused."""
    from .data import read_image, to_channels
    from .units import to_model

    img = read_image(path, max_pixels=max_pixels, alpha=alpha)
    raw_model, raw_input = int(data_config.get("bit_depth", 8)) == 0, int(img.get("bit_depth", 8)) == 0
    if raw_model != raw_input:
        have = "a raw array (values in the data's units)" if raw_input else "an 8/16-bit image"
        want = "raw arrays (NPY/NPZ/float TIFF)" if raw_model else "8/16-bit images"
        raise InputError(f"{path}: {have}, and the model was trained on {want}")
    values = to_channels(np.asarray(img["image"], dtype=np.float32), int(data_config["channels"]), path)
    return to_model(torch.from_numpy(values), data_config)


def _sized(path: Path, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[1:]) != tuple(size):
        raise InputError(f"{path}: {x.shape[1]} x {x.shape[2]} pixels, expected {size[0]} x {size[1]}")
    return x


def _record(kind: str, path: Path, original: bool) -> dict:
    """What a sample's metadata says about its input: the edit, the source file (absolute) and,
    when the sample should reproduce it, the original with its sha256 (``evaluate`` checks it)."""
    from ...core.io import sha256_file

    rec = {"edit": kind, "source": str(path.resolve())}
    if original:
        rec.update(original=rec["source"], original_sha256=sha256_file(path))
    return rec


def _lowres_one(path: Path, data_config: dict, data_cfg: dict) -> tuple[torch.Tensor, bool]:
    """A super-resolution input at the low resolution, and whether it was a full-size original."""
    f = int(data_config["sr_factor"])
    H, W = int(data_config["height"]), int(data_config["width"])
    x = model_space(path, data_config, alpha=str(data_cfg.get("alpha", "drop")),
                    max_pixels=int(data_cfg.get("max_pixels", 50_000_000)))
    h, w = x.shape[1:]
    if (h, w) == (H, W):
        return downsample(x[None], f)[0], True
    if (h, w) == (H // f, W // f):
        return x, False
    raise InputError(f"{path}: {h} x {w} pixels; this x{f} model upscales {H // f} x {W // f} images "
                     f"(or takes {H} x {W} originals, downsampled first)")


def _one(kind: str, path: Path, data_config: dict, data_cfg: dict) -> tuple[torch.Tensor, bool]:
    """One input of an edit in model space, and whether it is the sample's original."""
    if kind == "lowres":
        return _lowres_one(path, data_config, data_cfg)
    x = model_space(path, data_config, alpha=str(data_cfg.get("alpha", "drop")),
                    max_pixels=int(data_cfg.get("max_pixels", 50_000_000)))
    return _sized(path, x, (int(data_config["height"]), int(data_config["width"]))), kind == "inpaint"


def check_inputs(sample: dict, data_config: dict, data_cfg: dict) -> None:
    """Every input file of the edit (and the mask) fits the model; read one at a time, nothing kept."""
    kind = edit_kind(sample)
    for path in input_files(str(sample[kind]), kind):
        _one(kind, path, data_config, data_cfg)
    if kind == "inpaint":
        hole_mask(sample, (int(data_config["height"]), int(data_config["width"])))


def load_inputs(sample: dict, seeds: Sequence[int], data_config: dict, data_cfg: dict) -> EditInputs:
    """The inputs of the edit a ``[sample]`` table asks for, one per seed (seed k: the k-th file)."""
    kind = edit_kind(sample)
    files = input_files(str(sample[kind]), kind)
    C, H, W = int(data_config["channels"]), int(data_config["height"]), int(data_config["width"])
    xs, records = [], {}
    for s in seeds:
        path = files[int(s) % len(files)]
        x, original = _one(kind, path, data_config, data_cfg)
        xs.append(x)
        records[int(s)] = _record(f"super_resolution_x{data_config['sr_factor']}" if kind == "lowres" else kind,
                                  path, original)
        if kind == "sdedit":
            records[int(s)]["strength"] = float(sample["strength"])
    x = torch.stack(xs)
    if kind == "lowres":
        return EditInputs(torch.zeros(len(seeds), C, H, W), lowres=upsample(x, (H, W)), records=records)
    if kind == "sdedit":
        return EditInputs(x, records=records)
    known = ~hole_mask(sample, (H, W))
    return EditInputs(x, known=known.expand(len(seeds), C, H, W).clone(), records=records)
