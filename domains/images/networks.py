"""The images domain's networks from its ``[model]`` table: ``network = "unet"`` (``unet.ImageUNet``)
or ``"dit"`` (``dit.ImageDiT``)."""

from __future__ import annotations

import torch.nn as nn

from ...core.io import InputError
from .dit import ImageDiT
from .tables import NETWORKS
from .unet import ImageUNet

__all__ = ["NETWORKS", "build_network"]


def build_network(model_cfg: dict, channels_in: int, num_classes: int, cond_channels: int = 0,
                  self_conditioning: bool = False, image_size=None) -> nn.Module:
    """The network the ``[model]`` table names (every key optional): ``network`` ("unet" | "dit"),
    for the U-Net ``channels`` 64, ``mults`` [1, 2, 2], ``res_blocks`` 2, ``attention_res`` 16,
    ``heads`` 4, ``emb_dim`` 0 (4 x channels), ``dropout`` 0.0; for the DiT ``patch`` 2, ``hidden``
    192, ``depth`` 6, ``heads`` 4, ``mlp_ratio`` 4.0, ``dropout`` 0.0. ``image_size`` ((H, W) or one
    int, the training images') places the U-Net's attention levels (``attention_res``); without it
    only its middle has attention. Bad values raise ``InputError``."""
    m = dict(model_cfg or {})
    kind = m.get("network", "unet")
    if kind not in NETWORKS:
        raise InputError(f"images: unknown model.network {kind!r} (choose one of {', '.join(map(repr, NETWORKS))})")
    try:
        if kind == "unet":
            mults = m.get("mults", [1, 2, 2])
            if isinstance(mults, (str, bytes)) or not hasattr(mults, "__iter__"):
                raise ValueError(f"model.mults must be a list of positive ints, got {mults!r}")
            return ImageUNet(channels_in, num_classes=num_classes, cond_channels=cond_channels,
                             self_conditioning=self_conditioning, channels=int(m.get("channels", 64)),
                             mults=[int(v) for v in mults], res_blocks=int(m.get("res_blocks", 2)),
                             attention_res=int(m.get("attention_res", 16)), heads=int(m.get("heads", 4)),
                             emb_dim=int(m.get("emb_dim", 0)) or None, dropout=float(m.get("dropout", 0.0)),
                             image_size=image_size)
        return ImageDiT(channels_in, num_classes=num_classes, cond_channels=cond_channels,
                        self_conditioning=self_conditioning, patch=int(m.get("patch", 2)),
                        hidden=int(m.get("hidden", 192)), depth=int(m.get("depth", 6)), heads=int(m.get("heads", 4)),
                        mlp_ratio=float(m.get("mlp_ratio", 4.0)), dropout=float(m.get("dropout", 0.0)))
    except (TypeError, ValueError) as e:
        raise InputError(f"images: bad [model] table for network '{kind}': {e}") from e
