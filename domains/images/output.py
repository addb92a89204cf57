"""Writing images: PNG files of 8 or 16 bits per channel (gray or RGB) with the sample's metadata in a
``tEXt`` chunk, written by a small encoder of the PNG format (W3C PNG, 2nd ed.: signature, IHDR,
tEXt, IDAT of zlib-deflated filter-0 scanlines, IEND; multi-byte samples big-endian), because
Pillow writes 16-bit PNGs of one channel only. Every file is written atomically.

The sample grid (``grid_png``) is an 8-bit picture of many images, each enlarged to at least
``cell`` pixels (nearest neighbour, so pixels stay pixels), with its caption drawn under it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.io import atomic_path, atomic_write_bytes

__all__ = ["png_bytes", "write_png", "grid_png", "quantise", "preview", "METADATA_KEY"]

METADATA_KEY = "sciffusion"  # the tEXt keyword holding the sample's JSON metadata
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (0 gray, 2 RGB)


def quantise(image01: np.ndarray, bit_depth: int) -> np.ndarray:
    """Values in [0, 1] (C, H, W) to unsigned integers of ``bit_depth`` (8 or 16), rounded to nearest."""
    top = (1 << bit_depth) - 1
    q = np.rint(np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0) * top)
    return q.astype(np.uint8 if bit_depth == 8 else np.uint16)


def preview(image01: np.ndarray) -> np.ndarray:
    """What a PNG can show of (C, H, W) values: the image itself for 1 or 3 channels, else its
    channels side by side as one gray image (1, H, C * W)."""
    image01 = np.asarray(image01)
    if image01.shape[0] in _COLOUR_TYPE:
        return image01
    return np.concatenate(list(image01), axis=1)[None]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """A PNG file of ``pixels``: (C, H, W) uint8 or uint16 with C = 1 or 3; ``text`` as tEXt chunks."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[0] not in _COLOUR_TYPE:
        raise ValueError(f"png_bytes: need (C, H, W) with C = 1 or 3, got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"png_bytes: need uint8 or uint16 pixels, got {pixels.dtype}")
    C, H, W = pixels.shape
    depth = 8 if pixels.dtype == np.uint8 else 16
    rows = np.ascontiguousarray(pixels.transpose(1, 2, 0)).astype(">u2" if depth == 16 else np.uint8)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(H))  # filter type 0 on every scanline
    out = [_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth, _COLOUR_TYPE[C], 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    out += [_chunk(b"IDAT", zlib.compress(raw, 6)), _chunk(b"IEND", b"")]
    return b"".join(out)


def write_png(path: str | Path, image01: np.ndarray, bit_depth: int = 8, meta: dict | None = None) -> Path:
    """Write (C, H, W) values in [0, 1] as an 8- or 16-bit PNG (atomically) with ``meta`` as JSON
    (channel counts other than 1 and 3: their ``preview``)."""
    path = Path(path)
    text = {METADATA_KEY: json.dumps(meta, sort_keys=True, ensure_ascii=True)} if meta else None
    atomic_write_bytes(path, png_bytes(quantise(preview(image01), 16 if bit_depth == 16 else 8), text))
    return path


def _caption(draw, x: int, y: int, text: str, width: int) -> None:
    from PIL import ImageFont

    font = ImageFont.load_default()
    while text and draw.textlength(text, font=font) > width - 2:
        text = text[:-1]
    draw.text((x + 1, y), text, fill=(20, 20, 20), font=font)


MAX_TILE = 256  # the longest side of a grid tile: larger images are shrunk (box filter) to fit


def _fit(image01: np.ndarray, side: int) -> np.ndarray:
    """(C, H, W) shrunk with a box filter so that its longer side is at most ``side``."""
    C, H, W = image01.shape
    if max(H, W) <= side:
        return image01
    import torch
    import torch.nn.functional as F

    size = (max(1, round(H * side / max(H, W))), max(1, round(W * side / max(H, W))))
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(image01))[None], size=size, mode="area")[0].numpy()


def grid_png(path: str | Path, images: Sequence[np.ndarray], captions: Sequence[str] | None = None,
             columns: int = 8, cell: int = 64) -> Path:
    """An 8-bit RGB grid of (C, H, W) images in [0, 1], each enlarged by an integer factor to at least
    ``cell`` pixels on its longer side (or shrunk to ``MAX_TILE``), with a caption line under each;
    written atomically."""
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("grid_png: no images to draw")
    imgs = [_fit(preview(np.asarray(im, dtype=np.float32)), MAX_TILE) for im in images]
    h, w = max(i.shape[1] for i in imgs), max(i.shape[2] for i in imgs)
    k = max(1, -(-cell // max(h, w)))
    caption_h = 12 if captions else 0
    cols = max(1, min(columns, len(imgs)))
    rows = -(-len(imgs) // cols)
    pad = 4
    sheet = Image.new("RGB", (cols * (w * k + pad) + pad, rows * (h * k + caption_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, im in enumerate(imgs):
        rgb = np.repeat(im, 3, axis=0) if im.shape[0] == 1 else im
        tile = Image.fromarray(quantise(rgb, 8).transpose(1, 2, 0), "RGB").resize(
            (im.shape[2] * k, im.shape[1] * k), Image.NEAREST)
        x = pad + (n % cols) * (w * k + pad)
        y = pad + (n // cols) * (h * k + caption_h + pad)
        sheet.paste(tile, (x, y))
        if captions:
            _caption(draw, x, y + h * k, str(captions[n]), w * k)
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
