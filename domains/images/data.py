"""Image files (PNG, JPEG, TIFF, NPY, NPZ) and built-in image sets as float32 (C, H, W) examples.

An example is ``{"image": float32 (C, H, W), "label": str | None, "file": str, "bit_depth": int}``.
Raster files (PNG, JPEG, TIFF) hold values in [0, 1]: 8-bit divided by 255, 16-bit by 65535, 1-bit
as 0/1; ``bit_depth`` is 8 or 16. Raw arrays (NPY, NPZ, float TIFF) keep their values as float32
(detector data; the domain normalises later) with ``bit_depth`` 0.

Every bad file raises ``InputError("<file>: <problem>")``. Sizes are checked against ``max_pixels``
from the file's header before anything is decoded or allocated (PNG IHDR, JPEG SOF, TIFF IFD, NPY
header), so a decompression bomb is refused without touching its data. Decisions:

- Only PNG, JPEG and TIFF content is decoded (whatever the extension says, the bytes decide which).
- Multi-frame files (TIFF stacks, animated PNG) are refused; a multi-picture JPEG (MPO) gives its
  primary picture. EXIF orientation and ICC profiles are ignored: values are read as stored.
- 16-bit colour PNGs (RGB, RGBA, gray+alpha) are refused: Pillow decodes only their upper 8 bits.
  16-bit colour TIFFs are read exactly (with tifffile).
- Pillow mode "I" (32-bit integer) is read as 16-bit (divided by 65535) when every value lies in
  0..65535, and refused otherwise. "CMYK" and "YCbCr" become RGB by Pillow's own conversion (no
  colour management); "P" maps through its palette to RGB, or RGBA when it has transparency.
- Alpha: ``alpha="drop"`` drops it, ``alpha="composite"`` composites onto white (1.0).
- Arrays: (H, W) is one channel. A 3-D array whose last dimension is 1, 3 or 4 and whose first is
  not is (H, W, C), channels-last; one whose first dimension is 1, 3 or 4 and whose last is not is
  (C, H, W), channels-first; when both are 1, 3 or 4 (e.g. (3, 8, 3), (4, 4, 4)) the layout is
  ambiguous and refused; when neither is, (C, H, W) with C <= 64. So (32, 32, 3) is an RGB image,
  (3, 32, 32) too. 4 channels of an array are 4 channels, not alpha. A 4-D array is a stack of N
  such images (the rule applied to the shape of one image: (N, 28, 28, 1) is channels-last).
  Object dtypes are refused (never unpickled).
- NPZ: every member is an image (or a stack); its examples are named ``<file>[member]``
  (``<file>[member][i]`` inside a stack, ``<file>[i]`` inside an NPY stack).
- Random crops (``load_image_folder(random_crop=True)``) are seeded per file by ``seed_of(seed,
  <path inside the folder>)`` and the example's index in the file, so adding, removing or renaming
  one file leaves the crops of every other file as they were. ``seed_of`` is stable across runs,
  processes and machines (SHA-256, not Python's salted ``hash``); callers of ``patches`` /
  ``patch_split`` pass ``seed_of(seed, example["file"])`` (or another stable name) for the same.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...core.io import InputError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "SKIMAGE_IMAGES", "ImageFolder", "read_image", "read_images",
           "list_image_files", "seed_of", "to_channels", "resize_image", "crop", "load_image_folder", "patches",
           "split_examples", "patch_split", "load_digits", "load_skimage", "load_lfw_subset"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")
ARRAY_EXTENSIONS = (".npy", ".npz")
DEFAULT_MAX_PIXELS = 50_000_000
MAX_CHANNELS_FIRST = 64  # a 3-D array whose first dimension is at most this is (C, H, W)
CHANNELS_LAST = (1, 3, 4)  # channel counts that mark a dimension of a 3-D array as the channel axis
ALPHA_MODES = ("drop", "composite")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma weights of R, G, B

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
PNG_COLOUR = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")

# the built-in scikit-image pictures that load offline (no pooch download), all uint8
SKIMAGE_IMAGES = ("hubble_deep_field", "cell", "retina", "moon", "camera", "coins", "immunohistochemistry",
                  "microaneurysms", "text", "brick", "grass", "gravel", "page", "clock", "checkerboard",
                  "astronaut", "chelsea", "coffee", "colorwheel")


def _example(image: np.ndarray, file: str, bit_depth: int, label: str | None = None) -> dict:
    return {"image": np.ascontiguousarray(image, dtype=np.float32), "label": label, "file": file,
            "bit_depth": bit_depth}


def _too_many(name, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise InputError(f"{name}: declares {w} x {h} = {w * h} pixels, above the limit of {max_pixels} "
                         "(data.max_pixels)")


def _finite(name, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or infinite values")


def _apply_alpha(a: np.ndarray, alpha: str, premultiplied: bool = False) -> np.ndarray:
    """(C, H, W) whose last channel is alpha in [0, 1] -> C - 1 channels: alpha dropped, or the
    colour composited onto white (c a + (1 - a), or c + (1 - a) for premultiplied colour)."""
    colour, a_ = a[:-1], a[-1:]
    if alpha == "drop":
        return colour
    return colour + (1.0 - a_) if premultiplied else colour * a_ + (1.0 - a_)


# ----------------------------------------------------------------------------- header sniffing


def _png_header(name, head: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a PNG's IHDR chunk."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise InputError(f"{name}: truncated or corrupt image (PNG without an IHDR chunk)")
    w, h, depth, colour = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, colour


def _jpeg_size(name, f) -> tuple[int, int]:
    """(width, height) from a JPEG's first SOF marker, walking the segment headers."""
    f.seek(2)
    while True:
        b = f.read(1)
        if b != b"\xff":
            break
        m = f.read(1)
        while m == b"\xff":
            m = f.read(1)
        if not m:
            break
        marker = m[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # markers without a length
        if marker in (0xD9, 0xDA):
            break  # end of image / start of scan before a frame header
        length = f.read(2)
        if len(length) < 2:
            break
        (n,) = struct.unpack(">H", length)
        if n < 2:
            break
        if marker in JPEG_SOF:
            body = f.read(5)
            if len(body) < 5:
                break
            h, w = struct.unpack(">HH", body[1:5])
            if w and h:
                return w, h
            break
        f.seek(n - 2, os.SEEK_CUR)
    raise InputError(f"{name}: truncated or corrupt image (no JPEG frame header)")


# ----------------------------------------------------------------------------- raster files


def _from_pil(im: Image.Image, name, alpha: str) -> tuple[np.ndarray, int]:
    """A loaded Pillow image as (C, H, W) float32 and its bit depth (see the module docstring)."""
    if im.mode == "P":
        pal = im.palette.mode if im.palette is not None else "RGB"
        im = im.convert("RGBA" if im.has_transparency_data or pal == "RGBA" else ("L" if pal == "L" else "RGB"))
    elif im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode in ("La", "RGBa"):  # premultiplied alpha
        im = im.convert(im.mode[:-1] + "A")
    elif im.mode in ("CMYK", "YCbCr", "RGBX"):
        im = im.convert("RGB")
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)[None], 8
    if mode in ("L", "LA", "RGB", "RGBA"):
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
        return (_apply_alpha(a, alpha) if mode in ("LA", "RGBA") else a), 8
    if mode in PIL_16BIT:
        return np.asarray(im).astype(np.float32)[None] / 65535.0, 16
    if mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: 32-bit integer image with values in [{lo}, {hi}], beyond 16 bits; "
                             "save it as a float TIFF or an NPY array to keep its raw values")
        return a.astype(np.float32)[None] / 65535.0, 16
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)[None]
        _finite(name, a)
        return a, 0
    raise InputError(f"{name}: unsupported image mode {mode!r} (supported: 1, L, LA, P, PA, I;16, I, F, "
                     "RGB, RGBA, CMYK, YCbCr)")


def _tiff_page(path: Path, max_pixels: int):
    """The first page of a TIFF as tifffile describes it, after the pixel limit, page count and
    data extent checks (nothing decoded yet)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
            page = tif.pages[0]
            w, h = int(page.imagewidth), int(page.imagelength)
            info = {"spp": int(page.samplesperpixel), "bits": int(page.bitspersample),
                    "float": int(page.sampleformat) == 3,
                    "end": max((int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts)), default=0)}
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises TiffFileError, ValueError, struct.error...
        raise InputError(f"{path}: truncated or corrupt image (TIFF: {type(e).__name__}: {e})") from None
    _too_many(path, w, h, max_pixels)
    if pages > 1:
        raise InputError(f"{path}: has {pages} pages (a TIFF stack); save one image per file, or the stack as "
                         "an NPY array of shape (N, C, H, W)")
    size = path.stat().st_size
    if info["end"] > size:
        raise InputError(f"{path}: truncated or corrupt image (TIFF image data ends at byte {info['end']}, "
                         f"the file has {size} bytes)")
    return info


def _read_tiff_exact(path: Path, alpha: str) -> tuple[np.ndarray, int]:
    """A TIFF that Pillow would truncate (16-bit colour, float colour, float16/64) read with tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            a, axes = page.asarray(), page.axes
            photometric, extra = int(page.photometric), tuple(int(x) for x in page.extrasamples)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - as in _tiff_page
        raise InputError(f"{path}: truncated or corrupt image (TIFF: {type(e).__name__}: {e})") from None
    if axes == "YX":
        a = a[None]
    elif axes == "YXS":
        a = np.moveaxis(a, -1, 0)
    elif axes != "SYX":
        raise InputError(f"{path}: TIFF with axes {axes!r} is not supported (one image of Y, X and samples)")
    if photometric not in (1, 2):  # MINISBLACK, RGB
        raise InputError(f"{path}: TIFF photometric interpretation {photometric} is not supported at "
                         f"{a.dtype} (gray or RGB only)")
    if a.dtype == np.uint8:
        a, depth = a.astype(np.float32) / 255.0, 8
    elif a.dtype == np.uint16:
        a, depth = a.astype(np.float32) / 65535.0, 16
    elif a.dtype.kind == "f":
        a, depth = a.astype(np.float32), 0
        _finite(path, a)
    else:
        raise InputError(f"{path}: TIFF samples of type {a.dtype} are not supported (uint8, uint16 or float)")
    colour = 3 if photometric == 2 else 1
    if a.shape[0] == colour + 1 and extra:
        if extra[0] in (1, 2):  # associated (premultiplied) / unassociated alpha
            a = _apply_alpha(a, alpha, premultiplied=extra[0] == 1)
        else:
            a = a[:colour]  # an unspecified extra sample
    if a.shape[0] != colour:
        raise InputError(f"{path}: TIFF with {a.shape[0]} samples per pixel is not supported")
    return a, depth


def _read_raster(path: Path, max_pixels: int, alpha: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(32)
        if head.startswith(PNG_SIGNATURE):
            fmt = "PNG"
            w, h, depth, colour = _png_header(path, head)
            _too_many(path, w, h, max_pixels)
            if depth == 16 and colour in (2, 4, 6):
                raise InputError(f"{path}: 16-bit {PNG_COLOUR[colour]} PNG: Pillow decodes only its upper 8 bits; "
                                 "save it as a 16-bit TIFF or an NPY array")
        elif head[:3] == b"\xff\xd8\xff":
            fmt = "JPEG"
            w, h = _jpeg_size(path, f)
            _too_many(path, w, h, max_pixels)
        elif head[:4] in TIFF_SIGNATURES:
            fmt = "TIFF"
        else:
            raise InputError(f"{path}: not a PNG, JPEG or TIFF image (its first bytes are {head[:8]!r})")
    if fmt == "TIFF":
        info = _tiff_page(path, max_pixels)
        if (info["bits"] > 8 and info["spp"] > 1) or (info["float"] and (info["bits"], info["spp"]) != (32, 1)):
            a, depth = _read_tiff_exact(path, alpha)
            return _example(a, str(path), depth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit was checked above
        try:
            with Image.open(path, formats=[fmt]) as im:
                if fmt == "PNG" and getattr(im, "n_frames", 1) > 1:
                    raise InputError(f"{path}: animated PNG with {im.n_frames} frames; save one image per file")
                im.load()
                a, depth = _from_pil(im, path, alpha)
        except (InputError, MemoryError):
            raise
        except Image.DecompressionBombError as e:
            raise InputError(f"{path}: refused by Pillow's decompression bomb limit ({e})") from None
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error...
            raise InputError(f"{path}: truncated or corrupt image ({type(e).__name__}: {e})") from None
    return _example(a, str(path), depth)


# ----------------------------------------------------------------------------- arrays


def _npy_header(name, f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of an NPY stream, read without loading or unpickling anything."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"NPY format version {version[0]}.{version[1]} is not supported")
    except Exception as e:  # noqa: BLE001 - ValueError, EOFError, SyntaxError from a malformed header
        raise InputError(f"{name}: not a valid NPY array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise InputError(f"{name}: NPY array of object dtype (it would need pickle, which is never loaded); "
                         "save a numeric array")
    if dtype.names is not None or dtype.kind not in "buif":
        raise InputError(f"{name}: NPY array of dtype {dtype} is not an image (bool, integer or float required)")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _check_array_header(name, shape: tuple, dtype: np.dtype, data_bytes: int, max_pixels: int) -> None:
    """The declared shape against the pixel limit and the bytes present, before loading."""
    if len(shape) not in (2, 3, 4):
        raise InputError(f"{name}: array of shape {shape} is not an image: (H, W), (C, H, W) or (H, W, C), "
                         "or a stack (N, C, H, W) / (N, H, W, C)")
    if 0 in shape:
        raise InputError(f"{name}: empty array (shape {shape})")
    n = math.prod(shape)
    if n > max_pixels:
        raise InputError(f"{name}: declares shape {shape} = {n} values, above the limit of {max_pixels} "
                         "(data.max_pixels)")
    if n * dtype.itemsize > data_bytes:
        raise InputError(f"{name}: truncated NPY: the header declares {n * dtype.itemsize} bytes of data, "
                         f"{data_bytes} are present")


def _channels_last(name, shape: tuple, what: str = "array") -> bool:
    """Whether a 3-D image shape is (H, W, C) (True) or (C, H, W) (False), by the rule of the module
    docstring; an ambiguous or unknown layout is an InputError naming ``name``."""
    first, last = shape[0] in CHANNELS_LAST, shape[2] in CHANNELS_LAST
    if last and not first:
        return True
    if first and not last:
        return False
    if first and last:
        raise InputError(f"{name}: {what} of shape {shape} has an ambiguous layout: it reads as (C, H, W) with "
                         f"C = {shape[0]} or as (H, W, C) with C = {shape[2]}; save it as (C, H, W) with H, W > 4, "
                         "or as (H, W, C) with H, W > 4")
    if shape[0] <= MAX_CHANNELS_FIRST:
        return False
    raise InputError(f"{name}: {what} of shape {shape} is neither (C, H, W) with C <= {MAX_CHANNELS_FIRST} "
                     "nor (H, W, C) with C in 1, 3, 4")


def _chw(name, a: np.ndarray) -> np.ndarray:
    """A 2-D or 3-D array as (C, H, W) by the rule of the module docstring."""
    if a.ndim == 2:
        return a[None]
    return np.moveaxis(a, -1, 0) if _channels_last(name, a.shape) else a


def _array_examples(name: str, a: np.ndarray) -> list[dict]:
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused next
        a = np.asarray(a).astype(np.float32)
    _finite(name, a)
    if a.ndim == 4:
        if _channels_last(name, a.shape[1:], "stack of images, each"):  # one decision for the whole stack
            a = np.moveaxis(a, -1, 1)
        return [_example(x, f"{name}[{i}]", 0) for i, x in enumerate(a)]
    return [_example(_chw(name, a), name, 0)]


def _read_npy(path: Path, max_pixels: int) -> list[dict]:
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(path, f)
        _check_array_header(path, shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), max_pixels)
        f.seek(0)
        try:
            a = np.lib.format.read_array(f, allow_pickle=False)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the header was valid; anything now is a corrupt body
            raise InputError(f"{path}: unreadable NPY array ({type(e).__name__}: {e})") from None
    return _array_examples(str(path), a)


def _read_npz(path: Path, max_pixels: int) -> list[dict]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable NPZ archive ({type(e).__name__}: {e})") from None
    out = []
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if not members:
            raise InputError(f"{path}: NPZ archive holds no arrays")
        for info in members:
            member = info.filename.removesuffix(".npy")
            name = f"{path}[{member}]"
            if not info.filename.endswith(".npy"):
                raise InputError(f"{name}: NPZ member is not an NPY array")
            try:
                with zf.open(info) as f:
                    shape, _, dtype = _npy_header(name, f)
                    header_bytes = f.tell()
                _check_array_header(name, shape, dtype, info.file_size - header_bytes, max_pixels)
                with zf.open(info) as f:
                    a = np.lib.format.read_array(f, allow_pickle=False)
            except (InputError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, EOFError, ValueError
                raise InputError(f"{name}: corrupt NPZ member ({type(e).__name__}: {e})") from None
            out.extend(_array_examples(name, a))
    return out


# ----------------------------------------------------------------------------- one file


def read_images(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "drop") -> list[dict]:
    """Every example of one file (one for a raster image, N for an NPY stack or an NPZ), label None."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            return _read_npy(path, max_pixels)
        if ext == ".npz":
            return _read_npz(path, max_pixels)
        return [_read_raster(path, max_pixels, alpha)]
    except PermissionError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "drop") -> dict:
    """One image file as one example (label None); a file holding several images is an error."""
    examples = read_images(path, max_pixels=max_pixels, alpha=alpha)
    if len(examples) != 1:
        raise InputError(f"{path}: holds {len(examples)} images, one expected (read_images reads them all)")
    return examples[0]


# ----------------------------------------------------------------------------- per-image transforms


def to_channels(image: np.ndarray, channels: int, name) -> np.ndarray:
    """(C, H, W) to ``channels`` channels: 0 or C keeps it, RGB -> 1 by ITU-R 601-2 luma
    (0.299 R + 0.587 G + 0.114 B), 1 -> 3 repeats gray; anything else is an InputError."""
    c = image.shape[0]
    if channels in (0, c):
        return image
    if channels == 1 and c == 3:
        return np.tensordot(np.asarray(LUMA, dtype=np.float32), image, axes=1)[None].astype(np.float32)
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    raise InputError(f"{name}: has {c} channels, cannot convert to data.channels = {channels} "
                     "(RGB converts to 1, gray to 3)")


def resize_image(image: np.ndarray, size: tuple[int, int], raw: bool = False) -> np.ndarray:
    """(C, H, W) resized to ``size`` = (H, W), aspect ratio not kept: Pillow bicubic per channel for
    raster values (clipped to [0, 1]), bilinear with antialiasing (torch) for raw arrays."""
    h, w = size
    if image.shape[1:] == (h, w):
        return image
    if raw:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    bicubic = Image.Resampling.BICUBIC
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize((w, h), bicubic))
           for c in image]
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def crop(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ``size`` = (H, W) window of a (C, H, W) array (a copy); the image must be
    at least that large."""
    h, w = size
    H, W = image.shape[1:]
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return image[:, top:top + h, left:left + w].copy()


def seed_of(seed: int, name: str) -> int:
    """A 64-bit seed from ``seed`` and a name (a file's path inside its folder, an example's file):
    the first 8 bytes of SHA-256 of both, so it is the same in every run, process and machine
    (unlike ``hash``), and differs between names. Give it to ``np.random.default_rng`` (with an
    index: ``default_rng([seed_of(seed, name), j])``), ``patches`` or ``patch_split`` so that the
    crops of one file do not depend on which other files are present."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little")


def _size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"images: data.size must be a positive int or (height, width), got {size!r}")
    return hw


# ----------------------------------------------------------------------------- folders


@dataclass
class ImageFolder:
    """Loaded images: ``examples`` (dicts, see the module docstring), ``label_names`` (sorted;
    empty when unlabelled), ``skipped`` (the error lines of bad files skipped)."""

    examples: list
    label_names: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def list_image_files(folder: str | Path, extensions: tuple = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files anywhere under ``folder`` (any case of the extension; hidden files and folders
    left out; symlinked folders not followed), sorted by their path inside ``folder``."""
    folder = Path(folder)
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in filenames:
            p = Path(dirpath) / n
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in exts and p.is_file():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _folder_labels(root: Path, files: list[Path], labels: bool) -> list[str | None]:
    """The label of each file: its first sub-folder under ``root`` when ``labels`` and every file
    lies in a sub-folder; None for all when there are no sub-folders (or ``labels`` is False)."""
    rel = [f.relative_to(root) for f in files]
    nested = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    if not labels or not nested:
        return [None] * len(files)
    top = [r for r in rel if len(r.parts) == 1]
    if top:
        shown = ", ".join(f"{d}/" for d in nested[:3]) + (", ..." if len(nested) > 3 else "")
        raise InputError(f"{root}: {len(top)} image files lie directly in the folder (e.g. {top[0]}) beside "
                         f"label sub-folders ({shown}); move them into a sub-folder, or set data.labels = false "
                         "to load every file unlabelled")
    return [r.parts[0] for r in rel]


def _hw(e: dict) -> str:
    return f"{e['image'].shape[1]} x {e['image'].shape[2]}"


def _check_consistent(root: Path, examples: list[dict], channels: int, size, any_size: bool = False) -> None:
    """Errors for a set that mixes raw arrays with raster images, channel counts (channels=0) or
    sizes (no data.size, unless ``any_size``)."""
    raw = [e for e in examples if e["bit_depth"] == 0]
    if raw and len(raw) < len(examples):
        raster = next(e for e in examples if e["bit_depth"] != 0)
        raise InputError(f"{root}: mixes raster images ({raster['file']}) and raw arrays ({raw[0]['file']}); "
                         "raster values are scaled to [0, 1] and raw arrays keep theirs, so keep one kind per dataset")
    if channels == 0:
        counts = Counter(e["image"].shape[0] for e in examples).most_common()
        if len(counts) > 1:
            (c1, _), (c2, _) = counts[:2]
            f1 = next(e["file"] for e in examples if e["image"].shape[0] == c1)
            f2 = next(e["file"] for e in examples if e["image"].shape[0] == c2)
            raise InputError(f"{root}: mixed channel counts: {f1} has {c1} channel(s), {f2} has {c2}; "
                             "set data.channels = 1 or 3 to convert them all")
    if size is None and not any_size:
        sizes = Counter(e["image"].shape[1:] for e in examples).most_common()
        if len(sizes) > 1:
            major = sizes[0][0]
            odd = [e for e in examples if e["image"].shape[1:] != major]
            shown = ", ".join(f"{e['file']} is {_hw(e)}" for e in odd[:3])
            more = f" (and {len(odd) - 3} more)" if len(odd) > 3 else ""
            raise InputError(f"{root}: images differ in size (height x width): most are {major[0]} x {major[1]}, "
                             f"but {shown}{more}; set data.size with data.resize = true or data.random_crop = true")


def load_image_folder(path: str | Path, *, labels: bool = True, size=None, resize: bool = False,
                      random_crop: bool = False, channels: int = 0, alpha: str = "drop", skip_bad: bool = False,
                      max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0, any_size: bool = False) -> ImageFolder:
    """Every image under a folder (recursively, sorted), labelled by first sub-folder.

    ``channels``: 0 = all must agree, else convert (``to_channels``). ``size`` = (H, W) or an int:
    with ``resize`` every image is resized to it, with ``random_crop`` a random window of it is cut
    (seeded by ``seed_of(seed, <the file's path inside the folder>)`` and the example's index in
    the file, so other files coming or going leave it unchanged), with neither an image of another
    size is a bad file; ``size=None``: all must agree, unless ``any_size`` (for patch datasets,
    whose images are cropped later: sizes may differ, channel counts and raw vs raster still must
    agree). ``skip_bad`` skips files
    that raise InputError (per-file problems) and lists their error lines in ``skipped``; a set
    that disagrees (mixed channels, sizes, raw and raster) is an error either way."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: image folder not found")
    hw = _size(size)
    if resize and random_crop:
        raise InputError("images: data.resize and data.random_crop exclude each other; choose one")
    if (resize or random_crop) and hw is None:
        raise InputError(f"images: data.{'resize' if resize else 'random_crop'} needs data.size")
    if int(channels) < 0:
        raise InputError(f"images: data.channels must be 0 (as the files are) or a channel count, got {channels!r}")
    files = list_image_files(root)
    if not files:
        raise InputError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    file_labels = _folder_labels(root, files, labels)
    examples, skipped = [], []
    for p, label in zip(files, file_labels):
        rel = p.relative_to(root).as_posix()
        try:
            got = []
            for j, e in enumerate(read_images(p, max_pixels=max_pixels, alpha=alpha)):
                img = to_channels(e["image"], int(channels), e["file"])
                if hw is not None and img.shape[1:] != hw:
                    if resize:
                        img = resize_image(img, hw, raw=e["bit_depth"] == 0)
                    elif random_crop:
                        if img.shape[1] < hw[0] or img.shape[2] < hw[1]:
                            raise InputError(f"{e['file']}: is {img.shape[1]} x {img.shape[2]} (height x width), "
                                             f"smaller than data.size = {hw[0]} x {hw[1]} for a random crop")
                        img = crop(img, hw, np.random.default_rng([seed_of(seed, rel), j]))
                    else:
                        raise InputError(f"{e['file']}: is {img.shape[1]} x {img.shape[2]} (height x width), not "
                                         f"data.size = {hw[0]} x {hw[1]}; set data.resize = true or "
                                         "data.random_crop = true")
                got.append(_example(img, e["file"], e["bit_depth"], label))
        except InputError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        examples.extend(got)
    if not examples:
        raise InputError(f"{root}: no usable image files ({len(skipped)} bad files skipped)")
    _check_consistent(root, examples, int(channels), hw, any_size)
    names = sorted({e["label"] for e in examples if e["label"] is not None})
    return ImageFolder(examples, names, skipped)


# ----------------------------------------------------------------------------- patches and splits


def _image_and_name(item, i: int) -> tuple[np.ndarray, str]:
    if isinstance(item, dict):
        return np.asarray(item["image"]), item["file"]
    return np.asarray(item), f"image {i}"


def _crops(img: np.ndarray, name: str, size: int, per_image: int, rng: np.random.Generator) -> list[np.ndarray]:
    if img.shape[1] < size or img.shape[2] < size:
        raise InputError(f"{name}: is {img.shape[1]} x {img.shape[2]} (height x width), smaller than the "
                         f"patch size {size}")
    return [crop(img, (size, size), rng) for _ in range(per_image)]


def patches(images, size: int, per_image: int, seed: int) -> list[np.ndarray]:
    """``per_image`` random ``size`` x ``size`` crops of each (C, H, W) array (or example), in
    order, reproducible from ``seed`` (image i draws from its own generator (seed, i)). For crops
    that follow the file rather than its position, call it per image with ``seed_of(seed, file)``."""
    out = []
    for i, item in enumerate(images):
        img, name = _image_and_name(item, i)
        out.extend(_crops(img, name, size, per_image, np.random.default_rng([int(seed), i])))
    return out


SPLIT_PARTS = {"train": "train", "valid": "test", "test": "test"}


def _part(split: str) -> str:
    part = SPLIT_PARTS.get(split)
    if part is None:
        raise ValueError(f"images: unknown split {split!r} (train, valid or test)")
    return part


def split_examples(examples: list, split: str, every: int = 10) -> list:
    """Deterministic split: example i (in sorted-file order) is "test" (= "valid") when
    ``i % every == 0``, "train" otherwise; ``every <= 1``: all train, test empty."""
    part = _part(split)
    if every <= 1:
        return list(examples) if part == "train" else []
    return [e for i, e in enumerate(examples) if (i % every == 0) == (part == "test")]


def patch_split(image, split: str, size: int, per_image: int, seed: int, every: int = 10) -> list[np.ndarray]:
    """Crops of one large (C, H, W) image with held-out pixels: "test" crops lie wholly in the bottom
    band of max(size, ceil(H / every)) rows, "train" crops wholly in the rows above it, so no test
    pixel is ever in a training crop. ``every <= 1``: train crops from the whole image, test empty.
    Pass ``seed=seed_of(data_seed, example["file"])`` so one image's crops do not depend on its
    position among the others."""
    part = _part(split)
    img, name = _image_and_name(image, 0)
    H = img.shape[1]
    if every <= 1:
        return _crops(img, name, size, per_image, np.random.default_rng([int(seed), 0])) if part == "train" else []
    band = max(size, math.ceil(H / every))
    if H - band < size:
        raise InputError(f"{name}: {H} rows cannot hold a training region and a held-out band of at least "
                         f"{size} rows each (patch size {size}, split every {every})")
    region = img[:, H - band:] if part == "test" else img[:, :H - band]
    return _crops(region, name, size, per_image, np.random.default_rng([int(seed), int(part == "test")]))


# ----------------------------------------------------------------------------- built-in data


def load_digits() -> ImageFolder:
    """scikit-learn's 1797 handwritten digits: (1, 8, 8) values / 16 in [0, 1], labels "0".."9",
    files "sklearn:digits[i]" (bit_depth 8: scaled like a raster image)."""
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    images = d.images.astype(np.float32) / 16.0
    examples = [_example(images[i][None], f"sklearn:digits[{i}]", 8, str(int(d.target[i])))
                for i in range(len(images))]
    return ImageFolder(examples, [str(k) for k in range(10)], [])


def load_skimage(name: str, *, channels: int = 0) -> dict:
    """One of scikit-image's bundled pictures (``SKIMAGE_IMAGES``, uint8) as an example in [0, 1],
    file "skimage:<name>", converted to ``channels`` like a folder's files."""
    if name not in SKIMAGE_IMAGES:
        raise InputError(f"skimage:{name}: unknown built-in image; known: {', '.join(SKIMAGE_IMAGES)}")
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    file = f"skimage:{name}"
    return _example(to_channels(a.astype(np.float32) / 255.0, int(channels), file), file, 8)


def load_lfw_subset() -> ImageFolder:
    """scikit-image's 200 LFW faces, (1, 25, 25) in [0, 1], unlabelled, files "skimage:lfw_subset[i]"."""
    import skimage.data

    faces = skimage.data.lfw_subset().astype(np.float32)
    return ImageFolder([_example(f[None], f"skimage:lfw_subset[{i}]", 8) for i, f in enumerate(faces)], [], [])
