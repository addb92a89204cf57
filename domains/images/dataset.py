"""The examples of a ``[data]`` table's split: a user's folder or the built-in data, whole images or
patches (``data.patch``), with the held-out split the table says (see ``data`` for the readers)."""

from __future__ import annotations

import warnings
from pathlib import Path

from ...core.io import InputError
from . import data as D

__all__ = ["load_examples", "describe"]

SPLITS = ("train", "valid", "test")


def _whole_or_patches(examples: list[dict], data_cfg: dict, split: str) -> list[dict]:
    """Whole images split every k-th, or patches whose test crops come from held-out rows."""
    every = int(data_cfg["split_every"])
    size = int(data_cfg["patch"])
    if not size:
        return D.split_examples(examples, split, every)
    out = []
    for e in examples:
        seed = D.seed_of(int(data_cfg["seed"]), str(e["file"]))  # a file's patches do not move when others come
        for j, crop in enumerate(D.patch_split(e["image"], split, size, int(data_cfg["patches_per_image"]), seed,
                                               every)):
            out.append(dict(e, image=crop, file=f"{e['file']}#patch{j}"))
    return out


def load_examples(data_cfg: dict, split: str) -> list[dict]:
    """The examples of ``split`` ("train"; "valid" and "test" are the held-out part)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    split = "train" if split == "train" else "test"
    path = str(data_cfg.get("path") or "")
    if path:
        size = tuple(int(v) for v in data_cfg["size"]) or None
        folder = D.load_image_folder(Path(path).expanduser(), labels=bool(data_cfg["labels"]), size=size,
                                     resize=bool(data_cfg["resize"]), random_crop=bool(data_cfg["random_crop"]),
                                     channels=int(data_cfg["channels"]), alpha=str(data_cfg["alpha"]),
                                     skip_bad=bool(data_cfg["skip_bad"]), max_pixels=int(data_cfg["max_pixels"]),
                                     seed=int(data_cfg["seed"]), any_size=bool(int(data_cfg["patch"])))
        if folder.skipped:
            warnings.warn(f"images: skipped {len(folder.skipped)} bad file(s) under {path} (data.skip_bad); the first: "
                          f"{folder.skipped[0]}", stacklevel=2)
        return _whole_or_patches(folder.examples, data_cfg, split)
    name = str(data_cfg["builtin"])
    if name == "digits":
        return _whole_or_patches(D.load_digits().examples, data_cfg, split)
    if name == "lfw_subset":
        return _whole_or_patches(D.load_lfw_subset().examples, data_cfg, split)
    if not int(data_cfg["patch"]):
        raise InputError(f"images: data.builtin = {name!r} is one large picture; set data.patch (e.g. 32) to train "
                         "on random crops of it")
    return _whole_or_patches([D.load_skimage(name, channels=int(data_cfg["channels"]))], data_cfg, split)


def describe(data_cfg: dict) -> str:
    """One line naming the data of a ``[data]`` table."""
    if data_cfg.get("path"):
        what = f"folder {data_cfg['path']}"
    else:
        what = {"digits": "scikit-learn digits (8x8)", "lfw_subset": "scikit-image lfw_subset faces"}.get(
            data_cfg.get("builtin", "digits"), f"scikit-image {data_cfg.get('builtin')}")
    if int(data_cfg.get("patch") or 0):
        what += f", {data_cfg['patch']}x{data_cfg['patch']} patches"
    return what
