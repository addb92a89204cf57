"""The typed config tables of the images domain: every key once, with its default, its checks and a
one-line comment. ``ImagesDomain.tables`` returns them; the engine tables' values are in its
``defaults()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ...core.config import Annotated, Check, ConfigError, Table, one_of
from ...core.sampling import SampleConfig

__all__ = ["ImagesModel", "ImagesData", "ImagesSample", "NETWORKS", "builtin_names"]

NETWORKS = ("unet", "dit")


def builtin_names() -> list[str]:
    from .data import SKIMAGE_IMAGES

    return ["digits", "lfw_subset", *SKIMAGE_IMAGES]


@dataclass(frozen=True)
class ImagesModel(Table):
    """``[model]``: the U-Net or the DiT (``networks.build_network``), and what it is conditioned on."""

    network: Annotated[str, one_of(NETWORKS)] = "unet"  # unet (residual blocks + attention) or dit (patch transformer)
    channels: Annotated[int, Check(lo=1)] = 64  # U-Net: width of the first level
    mults: Annotated[list[int], Check(lo=1)] = field(default_factory=lambda: [1, 2, 2])  # U-Net: width factor per level
    res_blocks: Annotated[int, Check(lo=1)] = 2  # U-Net: residual blocks per level
    attention_res: Annotated[int, Check(lo=0)] = 16  # U-Net: self-attention at levels whose longer side is <= this (0: none)
    heads: Annotated[int, Check(lo=1)] = 4  # attention heads (U-Net and DiT)
    emb_dim: Annotated[int, Check(lo=0)] = 0  # U-Net: time/label embedding width (0: 4 x channels)
    dropout: Annotated[float, Check(lo=0, hi=1, hi_open=True)] = 0.0  # dropout (U-Net residual blocks, DiT MLPs)
    patch: Annotated[int, Check(lo=1)] = 2  # DiT: patch side in pixels
    hidden: Annotated[int, Check(lo=1)] = 192  # DiT: token width
    depth: Annotated[int, Check(lo=1)] = 6  # DiT: transformer blocks
    mlp_ratio: Annotated[float, Check(lo=0, lo_open=True)] = 4.0  # DiT: MLP width / token width
    class_conditional: bool = True  # condition on the class labels when the data has them (classifier-free guidance)
    sr_factor: Annotated[int, one_of(lambda: [0, 2, 4])] = 0  # super-resolution model: x2 or x4 (SR3: the upsampled input as channels); 0: none

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        if not table["mults"]:
            raise ConfigError("model.mults", "must list at least one level, e.g. [1, 2, 2]")
        if table["network"] == "dit" and table["hidden"] % table["heads"]:
            raise ConfigError("model.hidden", f"{table['hidden']} is not divisible by model.heads = {table['heads']}")


@dataclass(frozen=True)
class ImagesData(Table):
    """``[data]``: a folder of PNG/JPEG/TIFF/NPY/NPZ (labels from sub-folders), or built-in data."""

    path: str = ""  # a folder of images (empty: the built-in data named by data.builtin)
    builtin: Annotated[str, one_of(builtin_names)] = "digits"  # digits (sklearn 8x8), lfw_subset, or a scikit-image picture (patches)
    labels: bool = True  # class labels from the first sub-folder under data.path
    size: Annotated[list[int], Check(lo=1)] = field(default_factory=list)  # [height, width] (empty: the files' own)
    resize: bool = False  # resize every image to data.size
    random_crop: bool = False  # crop a random data.size window from every image
    channels: Annotated[int, one_of(lambda: [0, 1, 3])] = 0  # 0: as the files are; 1: luminance; 3: RGB
    alpha: Annotated[str, one_of(lambda: ["drop", "composite"])] = "drop"  # alpha channels: dropped or composited on white
    patch: Annotated[int, Check(lo=0)] = 0  # train on random patch x patch crops of the images (0: whole images)
    patches_per_image: Annotated[int, Check(lo=1)] = 2000  # crops drawn from each image when data.patch > 0
    split_every: Annotated[int, Check(lo=0)] = 10  # every k-th image is held out (patches: the bottom 1/k band of rows)
    skip_bad: bool = False  # skip unreadable images (counted) instead of failing
    max_pixels: Annotated[int, Check(lo=1)] = 50_000_000  # refuse images declaring more pixels (decompression bombs)
    seed: Annotated[int, Check(lo=0)] = 0  # seed of random crops and patches

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        if table["size"] and len(table["size"]) != 2:
            raise ConfigError("data.size", f"must be [height, width], got {table['size']}")
        if (table["resize"] or table["random_crop"]) and not table["size"]:
            raise ConfigError("data.size", "data.resize and data.random_crop need data.size = [height, width]")
        if table["resize"] and table["random_crop"]:
            raise ConfigError("data.resize", "choose one of data.resize and data.random_crop")


@dataclass(frozen=True)
class ImagesSample(SampleConfig):
    """``[sample]`` plus the images domain's own keys (see ``edits``). ``inpaint``, ``sdedit`` and
    ``lowres`` take an image file or a folder (seed k edits the folder's k-th image, cycling)."""

    label: Annotated[Union[int, str], Check(lo=-1)] = -1  # class index or name (-1: drawn per seed from the training counts)
    inpaint: str = ""  # image(s) to inpaint (the originals: their known pixels are kept exactly)
    mask: str = ""  # mask image (nonzero = regenerate) of the same size; or use mask_box
    mask_box: Annotated[list[int], Check(lo=0)] = field(default_factory=list)  # [top, left, height, width] to regenerate
    sdedit: str = ""  # image(s) to edit with SDEdit
    strength: Annotated[float, Check(lo=0, hi=1, lo_open=True)] = 0.5  # SDEdit start time t0 (0: unchanged, 1: a new sample)
    lowres: str = ""  # super-resolution input(s): low-resolution images, or full-size originals (downsampled first)
    grid_picture: bool = True  # write grid.png (the run's first 64 samples) when the run completes

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        super().check(table, cfg)
        edits = [k for k in ("inpaint", "sdedit", "lowres") if table[k]]
        if len(edits) > 1:
            raise ConfigError(f"sample.{edits[1]}", f"choose one edit per run (sample.{edits[0]} is set too)")
        if table["inpaint"] and not (table["mask"] or table["mask_box"]):
            raise ConfigError("sample.mask", "inpainting needs sample.mask (an image) or sample.mask_box")
        if table["mask"] and table["mask_box"]:
            raise ConfigError("sample.mask_box", "give sample.mask or sample.mask_box, not both")
        if table["mask_box"] and len(table["mask_box"]) != 4:
            raise ConfigError("sample.mask_box", f"must be [top, left, height, width], got {table['mask_box']}")
        if (table["mask"] or table["mask_box"]) and not table["inpaint"]:
            raise ConfigError("sample.inpaint", "a mask needs the image to inpaint (sample.inpaint)")
        if table["sampler"] == "repaint" and not table["inpaint"]:
            raise ConfigError("sample.sampler", "repaint resamples around known pixels: set sample.inpaint and a mask")
        if table["lowres"] and not int(cfg["model"]["sr_factor"]):
            raise ConfigError("sample.lowres", "this model is not a super-resolution model (model.sr_factor = 0)")
