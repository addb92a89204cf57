"""The images domain's data layer: real files written with Pillow / tifffile / NumPy into tmp_path,
values checked exactly (approximately for JPEG), and bad input refused with the file named."""

import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from sciffusion.core.io import InputError
from sciffusion.domains.images import data as D


# ----------------------------------------------------------------------------- helpers


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def raw_png(width: int, height: int, depth: int, colour: int, rows: bytes = b"") -> bytes:
    """A PNG by hand: signature, IHDR with a valid CRC, one IDAT of ``rows`` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def gray8(shape=(4, 5), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def message(excinfo) -> str:
    return str(excinfo.value)


# ----------------------------------------------------------------------------- raster values


def test_gray8_png_exact(tmp_path):
    a = gray8()
    e = D.read_image(save(Image.fromarray(a), tmp_path / "g.png"))
    assert e["image"].dtype == np.float32 and e["image"].shape == (1, 4, 5)
    np.testing.assert_array_equal(e["image"][0], a.astype(np.float32) / 255)
    assert e["bit_depth"] == 8 and e["label"] is None and e["file"] == str(tmp_path / "g.png")


def test_gray16_png_exact(tmp_path):
    a = np.array([[0, 257, 65535], [1, 1000, 40000]], dtype=np.uint16)
    e = D.read_image(save(Image.fromarray(a), tmp_path / "g16.png"))
    assert e["bit_depth"] == 16
    assert e["image"][0, 0, 2] == 1.0
    assert e["image"][0, 0, 1] == np.float32(257 / 65535)
    np.testing.assert_array_equal(e["image"][0], a.astype(np.float32) / 65535)


def test_gray16_tiff_exact(tmp_path):
    a = np.array([[0, 257, 65535]], dtype=np.uint16)
    e = D.read_image(save(Image.fromarray(a), tmp_path / "g16.tif"))
    assert e["bit_depth"] == 16
    np.testing.assert_array_equal(e["image"][0], a.astype(np.float32) / 65535)


def test_rgb16_tiff_exact(tmp_path):
    a = np.array([[[1000, 30000, 65535], [257, 0, 5]]], dtype=np.uint16)  # Pillow would keep 8 bits of these
    tifffile.imwrite(tmp_path / "rgb16.tif", a, photometric="rgb")
    e = D.read_image(tmp_path / "rgb16.tif")
    assert e["bit_depth"] == 16 and e["image"].shape == (3, 1, 2)
    np.testing.assert_array_equal(e["image"], np.moveaxis(a, -1, 0).astype(np.float32) / 65535)


def test_rgba16_tiff_alpha(tmp_path):
    a = np.zeros((1, 2, 4), dtype=np.uint16)
    a[0, 0] = [65535, 0, 0, 0]  # transparent red
    a[0, 1] = [0, 65535, 0, 65535]  # opaque green
    tifffile.imwrite(tmp_path / "rgba16.tif", a, photometric="rgb", extrasamples=["unassalpha"])
    drop = D.read_image(tmp_path / "rgba16.tif")["image"]
    comp = D.read_image(tmp_path / "rgba16.tif", alpha="composite")["image"]
    np.testing.assert_array_equal(drop[:, 0, 0], [1, 0, 0])
    np.testing.assert_array_equal(comp[:, 0, 0], [1, 1, 1])
    np.testing.assert_array_equal(comp[:, 0, 1], [0, 1, 0])


def test_rgb_jpeg_approximately(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    a = np.stack([x * 8, y * 8, np.full_like(x, 128)], -1).astype(np.uint8)
    e = D.read_image(save(Image.fromarray(a), tmp_path / "c.jpg", quality=95))
    assert e["image"].shape == (3, 32, 32) and e["bit_depth"] == 8
    assert np.abs(e["image"] - np.moveaxis(a, -1, 0) / 255).max() < 0.06


def test_palette_png_values_are_palette_colours(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    for i in range(3):
        im.putpixel((i, 0), i)
    e = D.read_image(save(im, tmp_path / "p.png"))
    np.testing.assert_array_equal(e["image"] * 255, np.array([[[10, 200, 0]], [[20, 100, 255]], [[30, 50, 0]]]))


def test_palette_png_with_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50])
    im.putpixel((1, 0), 1)
    path = save(im, tmp_path / "pt.png", transparency=0)
    np.testing.assert_array_equal(D.read_image(path)["image"][:, 0, 0] * 255, [10, 20, 30])
    comp = D.read_image(path, alpha="composite")["image"]
    np.testing.assert_array_equal(comp[:, 0, 0], [1, 1, 1])
    np.testing.assert_array_equal(comp[:, 0, 1] * 255, [200, 100, 50])


def test_rgba_drop_and_composite(tmp_path):
    a = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 51]]], dtype=np.uint8)
    path = save(Image.fromarray(a, "RGBA"), tmp_path / "a.png")
    drop = D.read_image(path)["image"]
    assert drop.shape == (3, 1, 3)
    np.testing.assert_array_equal(drop[:, 0, 0], [1, 0, 0])
    comp = D.read_image(path, alpha="composite")["image"]
    np.testing.assert_array_equal(comp[:, 0, 0], [1, 1, 1])  # transparent -> white
    np.testing.assert_array_equal(comp[:, 0, 1], [0, 0, 1])  # opaque -> itself
    np.testing.assert_allclose(comp[:, 0, 2], [0.8, 0.8, 0.8], atol=1e-6)  # black at alpha 0.2
    with pytest.raises(ValueError, match="alpha"):
        D.read_image(path, alpha="keep")


def test_la_png(tmp_path):
    path = save(Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), "LA"), tmp_path / "la.png")
    drop = D.read_image(path)["image"]
    assert drop.shape == (1, 1, 2)
    np.testing.assert_array_equal(drop[0, 0] * 255, [100, 100])
    np.testing.assert_allclose(D.read_image(path, alpha="composite")["image"][0, 0], [1.0, 100 / 255])


def test_one_bit_png(tmp_path):
    im = Image.new("1", (3, 2), 0)
    im.putpixel((1, 1), 1)
    e = D.read_image(save(im, tmp_path / "b.png"))
    assert e["bit_depth"] == 8
    np.testing.assert_array_equal(e["image"][0], [[0, 0, 0], [0, 1, 0]])


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    e = D.read_image(save(im, tmp_path / "k.jpg", quality=95))
    assert e["image"].shape == (3, 16, 16)
    assert np.abs(e["image"][:, 8, 8] - [1, 0, 0]).max() < 0.05


def test_ycbcr_tiff_converted_to_rgb(tmp_path):
    path = save(Image.new("RGB", (4, 4), (200, 50, 20)).convert("YCbCr"), tmp_path / "y.tif")
    assert Image.open(path).mode == "YCbCr"
    img = D.read_image(path)["image"]
    assert img.shape == (3, 4, 4) and np.abs(img[:, 0, 0] * 255 - [200, 50, 20]).max() < 3


def test_int32_tiff_within_16_bits_reads_as_16_bit(tmp_path):
    tifffile.imwrite(tmp_path / "i.tif", np.array([[0, 257, 65535]], dtype=np.int32))
    e = D.read_image(tmp_path / "i.tif")
    assert e["bit_depth"] == 16
    np.testing.assert_array_equal(e["image"][0, 0], np.float32([0, 257 / 65535, 1]))
    tifffile.imwrite(tmp_path / "big.tif", np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(InputError, match=r"big\.tif: 32-bit integer .*\[0, 70000\]"):
        D.read_image(tmp_path / "big.tif")


def test_float_tiff_raw(tmp_path):
    a = np.array([[1.5, -2.0, 1e4]], dtype=np.float32)
    e = D.read_image(save(Image.fromarray(a), tmp_path / "f.tif"))
    assert e["bit_depth"] == 0
    np.testing.assert_array_equal(e["image"][0], a)
    tifffile.imwrite(tmp_path / "frgb.tif", np.full((2, 2, 3), 7.25, np.float32), photometric="rgb")
    e = D.read_image(tmp_path / "frgb.tif")
    assert e["bit_depth"] == 0 and e["image"].shape == (3, 2, 2) and (e["image"] == 7.25).all()
    save(Image.fromarray(np.array([[1.0, np.nan]], np.float32)), tmp_path / "nan.tif")
    with pytest.raises(InputError, match=r"nan\.tif: contains NaN or infinite values"):
        D.read_image(tmp_path / "nan.tif")


def test_uppercase_extension_and_content_decides(tmp_path):
    a = gray8()
    save(Image.fromarray(a), tmp_path / "G.PNG")
    np.testing.assert_array_equal(D.read_image(tmp_path / "G.PNG")["image"][0] * 255, a)
    save(Image.fromarray(a), tmp_path / "really_png.jpg", format="PNG")
    np.testing.assert_array_equal(D.read_image(tmp_path / "really_png.jpg")["image"][0] * 255, a)


# ----------------------------------------------------------------------------- arrays


def test_npy_shapes(tmp_path):
    hw = np.arange(12, dtype=np.float64).reshape(3, 4) * 1e3
    np.save(tmp_path / "hw.npy", hw)
    e = D.read_image(tmp_path / "hw.npy")
    assert e["bit_depth"] == 0 and e["image"].shape == (1, 3, 4) and e["image"].dtype == np.float32
    np.testing.assert_array_equal(e["image"][0], hw)

    chw = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    np.save(tmp_path / "chw.npy", chw)
    np.testing.assert_array_equal(D.read_image(tmp_path / "chw.npy")["image"], chw)

    hwc = np.random.default_rng(1).integers(-5, 5, size=(70, 8, 3)).astype(np.int16)
    np.save(tmp_path / "hwc.npy", hwc)
    np.testing.assert_array_equal(D.read_image(tmp_path / "hwc.npy")["image"], np.moveaxis(hwc, -1, 0))

    np.save(tmp_path / "bad3.npy", np.zeros((70, 8, 7), np.float32))
    with pytest.raises(InputError, match=r"bad3\.npy: array of shape \(70, 8, 7\) is neither"):
        D.read_image(tmp_path / "bad3.npy")
    np.save(tmp_path / "five.npy", np.zeros((1, 1, 2, 2, 2), np.float32))
    with pytest.raises(InputError, match=r"five\.npy: array of shape .* is not an image"):
        D.read_image(tmp_path / "five.npy")


def test_npy_stack(tmp_path):
    stack = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2)
    np.save(tmp_path / "s.npy", stack)
    ex = D.read_images(tmp_path / "s.npy")
    assert [e["file"] for e in ex] == [f"{tmp_path / 's.npy'}[{i}]" for i in range(3)]
    np.testing.assert_array_equal(ex[2]["image"], stack[2])
    with pytest.raises(InputError, match=r"s\.npy: holds 3 images"):
        D.read_image(tmp_path / "s.npy")


def test_small_channels_last_arrays(tmp_path):
    rng = np.random.default_rng(7)
    hwc = rng.random((32, 32, 3))  # 32 rows: once read as 32 channels of 32 x 3
    np.save(tmp_path / "hwc.npy", hwc)
    np.testing.assert_array_equal(D.read_image(tmp_path / "hwc.npy")["image"],
                                  np.moveaxis(hwc, -1, 0).astype(np.float32))
    for shape in ((28, 28, 1), (2, 8, 4)):  # last 1, 3, 4 and first not: channels-last
        np.save(tmp_path / "x.npy", np.zeros(shape))
        assert D.read_image(tmp_path / "x.npy")["image"].shape == (shape[2], shape[0], shape[1])
    for shape in ((3, 32, 32), (1, 28, 28), (4, 8, 2), (2, 5, 6), (64, 8, 8)):  # channels-first
        np.save(tmp_path / "x.npy", np.zeros(shape))
        assert D.read_image(tmp_path / "x.npy")["image"].shape == shape

    stack = rng.random((5, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "rgb_stack.npy", stack)
    ex = D.read_images(tmp_path / "rgb_stack.npy")
    assert len(ex) == 5 and all(e["image"].shape == (3, 32, 32) for e in ex)
    np.testing.assert_array_equal(ex[4]["image"], np.moveaxis(stack[4], -1, 0))
    np.save(tmp_path / "mnist.npy", np.zeros((6, 28, 28, 1), np.uint8))
    assert [e["image"].shape for e in D.read_images(tmp_path / "mnist.npy")] == [(1, 28, 28)] * 6
    np.savez(tmp_path / "z.npz", s=np.zeros((2, 16, 16, 4)))
    assert [e["image"].shape for e in D.read_images(tmp_path / "z.npz")] == [(4, 16, 16)] * 2

    for shape in ((3, 8, 3), (4, 4, 4), (1, 9, 1)):
        np.save(tmp_path / "amb.npy", np.zeros(shape))
        with pytest.raises(InputError, match=r"amb\.npy: array of shape .* ambiguous layout.*"
                                             r"\(C, H, W\) with H, W > 4"):
            D.read_image(tmp_path / "amb.npy")
    np.save(tmp_path / "amb_stack.npy", np.zeros((2, 3, 8, 3)))
    with pytest.raises(InputError, match=r"amb_stack\.npy: stack of images, each of shape \(3, 8, 3\) has an "
                                         r"ambiguous layout"):
        D.read_images(tmp_path / "amb_stack.npy")
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "ok.npy", np.zeros((3, 6, 5)))
    np.save(tmp_path / "f" / "odd.npy", np.zeros((4, 6, 4)))
    with pytest.raises(InputError, match=r"odd\.npy: .*ambiguous"):
        D.load_image_folder(tmp_path / "f")
    assert len(D.load_image_folder(tmp_path / "f", skip_bad=True)) == 1


def test_npz_members(tmp_path):
    a, b = np.ones((4, 4), np.float32), np.full((3, 5, 6), 2.0)  # (3, 4, 4) would be ambiguous
    np.savez_compressed(tmp_path / "m.npz", first=a, second=b)
    ex = D.read_images(tmp_path / "m.npz")
    assert [e["file"] for e in ex] == [f"{tmp_path / 'm.npz'}[first]", f"{tmp_path / 'm.npz'}[second]"]
    assert ex[0]["image"].shape == (1, 4, 4) and ex[1]["image"].shape == (3, 5, 6)
    assert (ex[1]["image"] == 2).all() and all(e["bit_depth"] == 0 for e in ex)
    np.savez(tmp_path / "bad.npz", ok=a, nan=np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match=r"bad\.npz\[nan\]: contains NaN"):
        D.read_images(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match=r"obj\.npz\[o\]: NPY array of object dtype"):
        D.read_images(tmp_path / "obj.npz")
    raw = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.npz"):
        D.read_images(tmp_path / "cut.npz")


# ----------------------------------------------------------------------------- bad files


def test_zero_size(tmp_path):
    for name in ("e.png", "e.npy", "e.npz", "e.tif"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(InputError, match=rf"{name}: empty file \(0 bytes\)"):
            D.read_image(tmp_path / name)
    with pytest.raises(InputError, match=r"missing\.png: file not found"):
        D.read_image(tmp_path / "missing.png")


def test_truncated_png_and_jpeg_and_tiff(tmp_path):
    a = gray8((64, 64))
    for name in ("t.png", "t.jpg", "t.tif"):
        raw = (save(Image.fromarray(a), tmp_path / ("full" + name))).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
        with pytest.raises(InputError, match=rf"{name}: truncated or corrupt image"):
            D.read_image(tmp_path / name)


def test_random_bytes_named_png(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(InputError, match=r"noise\.png: not a PNG, JPEG or TIFF image"):
        D.read_image(tmp_path / "noise.png")
    (tmp_path / "noise.npy").write_bytes(b"garbage!" * 20)
    with pytest.raises(InputError, match=r"noise\.npy: not a valid NPY array"):
        D.read_image(tmp_path / "noise.npy")
    (tmp_path / "noise.npz").write_bytes(b"garbage!" * 20)
    with pytest.raises(InputError, match=r"noise\.npz: not a readable NPZ archive"):
        D.read_image(tmp_path / "noise.npz")


def test_png_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(raw_png(100_000, 100_000, 8, 0, b"\x00" * 100))
    start = time.perf_counter()
    with pytest.raises(InputError) as ei:
        D.read_image(path)
    assert time.perf_counter() - start < 1.0
    assert message(ei) == (f"{path}: declares 100000 x 100000 = 10000000000 pixels, above the limit of "
                           f"{D.DEFAULT_MAX_PIXELS} (data.max_pixels)")
    # a limit raised above Pillow's own: Pillow's DecompressionBombError becomes an InputError too
    with pytest.raises(InputError, match=r"bomb\.png: refused by Pillow's decompression bomb limit"):
        D.read_image(path, max_pixels=10 ** 11)
    # between our limit and Pillow's: ours refuses (Pillow would only warn)
    path2 = tmp_path / "big.png"
    path2.write_bytes(raw_png(10_000, 9_000, 8, 0, b"\x00"))
    with pytest.raises(InputError, match=r"big\.png: declares 10000 x 9000 = 90000000 pixels"):
        D.read_image(path2)
    with pytest.raises(InputError, match="above the limit of 100 "):
        D.read_image(save(Image.fromarray(gray8((20, 20))), tmp_path / "small.png"), max_pixels=100)


def test_jpeg_and_tiff_bombs(tmp_path):
    jpg = (save(Image.fromarray(gray8((8, 8))), tmp_path / "j.jpg")).read_bytes()
    i = jpg.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    (tmp_path / "jbomb.jpg").write_bytes(jpg[:i + 5] + struct.pack(">HH", 60000, 60000) + jpg[i + 9:])
    with pytest.raises(InputError, match=r"jbomb\.jpg: declares 60000 x 60000 = 3600000000 pixels"):
        D.read_image(tmp_path / "jbomb.jpg")
    # a minimal little-endian TIFF: one IFD with width, length, bits, strip offset/count
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (273, 4, 1, 8), (279, 4, 1, 10)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    (tmp_path / "tbomb.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    with pytest.raises(InputError, match=r"tbomb\.tif: declares 100000 x 100000 = 10000000000 pixels"):
        D.read_image(tmp_path / "tbomb.tif")


def test_npy_bad_headers(tmp_path):
    # a header declaring a huge shape, with hardly any data behind it
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match=r"huge\.npy: declares shape \(100000, 100000\) = 10000000000 values, "
                                         r"above the limit"):
        D.read_image(tmp_path / "huge.npy")
    np.save(tmp_path / "full.npy", np.ones((32, 32), np.float32))
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"cut\.npy: truncated NPY: the header declares 4096 bytes of data, "
                                         r"3996 are present"):
        D.read_image(tmp_path / "cut.npy")
    np.save(tmp_path / "obj.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"obj\.npy: NPY array of object dtype"):
        D.read_image(tmp_path / "obj.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(InputError, match=r"nan\.npy: contains NaN or infinite values"):
        D.read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "inf.npy", np.array([[0.0, 1e300]]))  # inf once float32
    with pytest.raises(InputError, match=r"inf\.npy: contains NaN or infinite values"):
        D.read_image(tmp_path / "inf.npy")
    np.save(tmp_path / "cplx.npy", np.ones((2, 2), np.complex64))
    with pytest.raises(InputError, match=r"cplx\.npy: NPY array of dtype complex64 is not an image"):
        D.read_image(tmp_path / "cplx.npy")


def test_unknown_mode_and_unsupported_files(tmp_path):
    path = save(Image.new("LAB", (2, 2), (50, 10, 10)), tmp_path / "lab.tif")
    with pytest.raises(InputError, match=r"lab\.tif: unsupported image mode 'LAB'"):
        D.read_image(path)
    rows = b"\x00" + np.array([[1000, 30000, 65535]], ">u2").tobytes()
    (tmp_path / "rgb16.png").write_bytes(raw_png(1, 1, 16, 2, rows))
    with pytest.raises(InputError, match=r"rgb16\.png: 16-bit RGB PNG: Pillow decodes only its upper 8 bits"):
        D.read_image(tmp_path / "rgb16.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 4, 4), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"stack\.tif: has 3 pages"):
        D.read_image(tmp_path / "stack.tif")


def test_pa_mode_through_pillow():
    im = Image.new("PA", (1, 1))
    im.putpalette([0, 0, 255])
    im.putpixel((0, 0), (0, 0))
    a, depth = D._from_pil(im, "x", "composite")
    assert depth == 8 and a.shape == (3, 1, 1)
    np.testing.assert_array_equal(a[:, 0, 0], [1, 1, 1])
    np.testing.assert_array_equal(D._from_pil(im, "x", "drop")[0][:, 0, 0], [0, 0, 1])


# ----------------------------------------------------------------------------- folders


def labelled_tree(root, sizes=((6, 6),) * 3):
    for label in ("dogs", "cats"):
        (root / label).mkdir(parents=True)
        for i, hw in enumerate(sizes):
            save(Image.fromarray(gray8(hw, seed=i)), root / label / f"{i}.png")
    return root


def test_labels_from_sub_folders(tmp_path):
    root = labelled_tree(tmp_path / "d")
    (root / "cats" / "deep").mkdir()
    save(Image.fromarray(gray8((6, 6))), root / "cats" / "deep" / "x.PNG")
    (root / ".hidden").mkdir()
    save(Image.fromarray(gray8((9, 9))), root / ".hidden" / "h.png")
    save(Image.fromarray(gray8((9, 9))), root / "cats" / ".h.png")
    (root / "cats" / "notes.txt").write_text("not an image")
    folder = D.load_image_folder(root)
    assert folder.label_names == ["cats", "dogs"]
    files = [e["file"] for e in folder.examples]
    assert files == [str(root / p) for p in ("cats/0.png", "cats/1.png", "cats/2.png", "cats/deep/x.PNG",
                                            "dogs/0.png", "dogs/1.png", "dogs/2.png")]
    assert [e["label"] for e in folder.examples] == ["cats"] * 4 + ["dogs"] * 3
    assert folder.skipped == [] and len(folder) == 7
    assert all(e["label"] is None for e in D.load_image_folder(root, labels=False).examples)


def test_unlabelled_flat_folder_and_empty_folder(tmp_path):
    for i in range(3):
        save(Image.fromarray(gray8((4, 4), i)), tmp_path / f"{i}.png")
    folder = D.load_image_folder(tmp_path)
    assert folder.label_names == [] and [e["label"] for e in folder.examples] == [None] * 3
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"empty: no image files \(\.png, \.jpg"):
        D.load_image_folder(tmp_path / "empty")
    with pytest.raises(InputError, match=r"nowhere: image folder not found"):
        D.load_image_folder(tmp_path / "nowhere")


def test_top_level_files_beside_label_folders(tmp_path):
    root = labelled_tree(tmp_path / "d")
    save(Image.fromarray(gray8((6, 6))), root / "stray.png")
    with pytest.raises(InputError, match=r"d: 1 image files lie directly in the folder \(e\.g\. stray\.png\) "
                                         r"beside label sub-folders \(cats/, dogs/\).*data\.labels = false"):
        D.load_image_folder(root)
    assert len(D.load_image_folder(root, labels=False)) == 7


def test_mixed_sizes_names_odd_file(tmp_path):
    root = labelled_tree(tmp_path / "d", sizes=((6, 6), (6, 6), (5, 7)))
    with pytest.raises(InputError) as ei:
        D.load_image_folder(root)
    m = message(ei)
    assert m.startswith(f"{root}: images differ in size")
    assert "most are 6 x 6" in m and f"{root / 'cats' / '2.png'} is 5 x 7" in m
    assert f"{root / 'dogs' / '2.png'} is 5 x 7" in m and "data.resize" in m and "data.random_crop" in m


def test_size_given_without_option(tmp_path):
    root = labelled_tree(tmp_path / "d", sizes=((6, 6), (5, 7)))
    with pytest.raises(InputError, match=r"1\.png: is 5 x 7 \(height x width\), not data\.size = 6 x 6"):
        D.load_image_folder(root, size=6)
    folder = D.load_image_folder(root, size=(6, 6), skip_bad=True)
    assert len(folder) == 2 and len(folder.skipped) == 2


def test_mixed_channels(tmp_path):
    save(Image.fromarray(gray8((4, 4))), tmp_path / "a.png")
    rgb = np.random.default_rng(3).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    save(Image.fromarray(rgb), tmp_path / "b.png")
    with pytest.raises(InputError) as ei:
        D.load_image_folder(tmp_path)
    m = message(ei)
    assert f"{tmp_path / 'a.png'} has 1 channel" in m and f"{tmp_path / 'b.png'} has 3" in m
    assert "data.channels = 1 or 3" in m
    gray = D.load_image_folder(tmp_path, channels=1).examples
    assert [e["image"].shape for e in gray] == [(1, 4, 4)] * 2
    lum = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(gray[1]["image"][0], lum, atol=1e-6)
    colour = D.load_image_folder(tmp_path, channels=3).examples
    assert [e["image"].shape for e in colour] == [(3, 4, 4)] * 2
    np.testing.assert_array_equal(colour[0]["image"][2], colour[0]["image"][0])


def test_skip_bad_counts(tmp_path):
    for i in range(3):
        save(Image.fromarray(gray8((4, 4), i)), tmp_path / f"{i}.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"junk" * 10)
    with pytest.raises(InputError, match=r"empty\.png: empty file"):
        D.load_image_folder(tmp_path)
    folder = D.load_image_folder(tmp_path, skip_bad=True)
    assert len(folder) == 3 and len(folder.skipped) == 2
    assert folder.skipped[0] == f"{tmp_path / 'empty.png'}: empty file (0 bytes)"
    assert folder.skipped[1].startswith(f"{tmp_path / 'junk.jpg'}: not a PNG, JPEG or TIFF")
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"allbad: no usable image files \(1 bad files skipped\)"):
        D.load_image_folder(bad, skip_bad=True)


def test_mixed_bit_depths_allowed_raw_and_raster_not(tmp_path):
    save(Image.fromarray(gray8((4, 4))), tmp_path / "a.png")
    save(Image.fromarray(np.full((4, 4), 65535, np.uint16)), tmp_path / "b.png")
    folder = D.load_image_folder(tmp_path)
    assert [e["bit_depth"] for e in folder.examples] == [8, 16] and folder.examples[1]["image"].max() == 1.0
    np.save(tmp_path / "c.npy", np.ones((4, 4)))
    with pytest.raises(InputError, match=r"mixes raster images \(.*a\.png\) and raw arrays \(.*c\.npy\)"):
        D.load_image_folder(tmp_path)


def test_resize_and_random_crop(tmp_path):
    y, x = np.mgrid[0:40, 0:30]
    save(Image.fromarray(((x + y) * 3).astype(np.uint8)), tmp_path / "a.png")
    save(Image.fromarray(gray8((20, 24), 1)), tmp_path / "b.png")
    r1 = D.load_image_folder(tmp_path, size=(16, 12), resize=True)
    r2 = D.load_image_folder(tmp_path, size=(16, 12), resize=True)
    assert [e["image"].shape for e in r1.examples] == [(1, 16, 12)] * 2
    assert all(0 <= e["image"].min() and e["image"].max() <= 1 for e in r1.examples)
    for a, b in zip(r1.examples, r2.examples):
        np.testing.assert_array_equal(a["image"], b["image"])

    c1 = D.load_image_folder(tmp_path, size=16, random_crop=True, seed=5).examples
    c2 = D.load_image_folder(tmp_path, size=16, random_crop=True, seed=5).examples
    c3 = D.load_image_folder(tmp_path, size=16, random_crop=True, seed=6).examples
    assert [e["image"].shape for e in c1] == [(1, 16, 16)] * 2
    for a, b in zip(c1, c2):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(c1, c3))
    full = D.read_image(tmp_path / "a.png")["image"][0]  # every crop is a window of the original
    win = c1[0]["image"][0]
    assert any(np.array_equal(full[t:t + 16, s:s + 16], win) for t in range(25) for s in range(15))

    with pytest.raises(InputError, match=r"b\.png: is 20 x 24 \(height x width\), smaller than data\.size = 24 x 26"):
        D.load_image_folder(tmp_path, size=(24, 26), random_crop=True)
    with pytest.raises(InputError, match="exclude each other"):
        D.load_image_folder(tmp_path, size=8, resize=True, random_crop=True)
    with pytest.raises(InputError, match="needs data.size"):
        D.load_image_folder(tmp_path, resize=True)


def test_any_size_allows_mixed_sizes_only(tmp_path):
    save(Image.fromarray(gray8((40, 30), 0)), tmp_path / "a.png")
    save(Image.fromarray(gray8((20, 24), 1)), tmp_path / "b.png")
    with pytest.raises(InputError, match="images differ in size"):
        D.load_image_folder(tmp_path)
    folder = D.load_image_folder(tmp_path, any_size=True)
    assert [e["image"].shape for e in folder.examples] == [(1, 40, 30), (1, 20, 24)]
    rgb = np.random.default_rng(3).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    save(Image.fromarray(rgb), tmp_path / "c.png")
    with pytest.raises(InputError, match="mixed channel counts"):
        D.load_image_folder(tmp_path, any_size=True)
    assert [e["image"].shape[0] for e in D.load_image_folder(tmp_path, any_size=True, channels=1).examples] == [1] * 3
    (tmp_path / "c.png").unlink()
    np.save(tmp_path / "d.npy", np.ones((12, 12)))
    with pytest.raises(InputError, match="mixes raster images"):
        D.load_image_folder(tmp_path, any_size=True)


def test_random_crops_follow_the_file_not_its_position(tmp_path):
    save(Image.fromarray(gray8((40, 40), 1)), tmp_path / "b.png")
    save(Image.fromarray(gray8((30, 50), 2)), tmp_path / "d.png")
    before = D.load_image_folder(tmp_path, size=8, random_crop=True, seed=3, labels=False).examples
    save(Image.fromarray(gray8((40, 40), 3)), tmp_path / "a.png")  # sorts first: shifts every index
    save(Image.fromarray(gray8((40, 40), 4)), tmp_path / "c.png")
    after = D.load_image_folder(tmp_path, size=8, random_crop=True, seed=3, labels=False).examples
    assert [e["file"] for e in after] == [str(tmp_path / n) for n in ("a.png", "b.png", "c.png", "d.png")]
    by_file = {e["file"]: e["image"] for e in after}
    for e in before:
        np.testing.assert_array_equal(by_file[e["file"]], e["image"])
    other = D.load_image_folder(tmp_path, size=8, random_crop=True, seed=4, labels=False).examples
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(after, other))

    # the examples of one file (an NPY stack) draw their own windows, by their index in the file
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "s.npy", np.stack([np.arange(40 * 40, dtype=np.float32).reshape(1, 40, 40)] * 3))
    crops = [e["image"] for e in D.load_image_folder(raw, size=8, random_crop=True, seed=3).examples]
    assert len(crops) == 3 and len({float(c[0, 0, 0]) for c in crops}) > 1


def test_seed_of_is_stable():
    assert D.seed_of(0, "cats/1.png") == D.seed_of(0, "cats/1.png")
    assert len({D.seed_of(0, "a.png"), D.seed_of(1, "a.png"), D.seed_of(0, "b.png"), D.seed_of(-1, "a.png")}) == 4
    assert 0 <= D.seed_of(-5, "x") < 2 ** 64
    # fixed across runs, processes and machines (SHA-256 of "0\0a.png"), not Python's salted hash
    import hashlib
    assert D.seed_of(0, "a.png") == int.from_bytes(hashlib.sha256(b"0\x00a.png").digest()[:8], "little")
    img = np.random.default_rng(0).random((1, 40, 40), dtype=np.float32)
    s = D.seed_of(2, "pic.png")
    assert all(np.array_equal(a, b) for a, b in zip(D.patch_split(img, "train", 8, 4, s),
                                                    D.patch_split(img, "train", 8, 4, s)))


def test_resize_raw_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.full((20, 20), 1234.5, np.float32))
    np.save(tmp_path / "b.npy", np.full((2, 10, 10), -3.0, np.float32))
    ex = D.load_image_folder(tmp_path, size=8, resize=True, channels=1, skip_bad=True)
    assert len(ex) == 1 and "has 2 channels" in ex.skipped[0]  # 2 channels cannot become 1
    assert ex.examples[0]["image"].shape == (1, 8, 8)
    np.testing.assert_allclose(ex.examples[0]["image"], 1234.5, rtol=1e-6)


# ----------------------------------------------------------------------------- patches and splits


def test_patches_reproducible():
    imgs = [np.random.default_rng(i).random((2, 30, 40), dtype=np.float32) for i in range(2)]
    p1, p2 = D.patches(imgs, 8, 5, seed=1), D.patches(imgs, 8, 5, seed=1)
    assert len(p1) == 10 and all(p.shape == (2, 8, 8) for p in p1)
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))
    assert not all(np.array_equal(a, b) for a, b in zip(p1, D.patches(imgs, 8, 5, seed=2)))
    with pytest.raises(InputError, match=r"image 0: is 30 x 40 \(height x width\), smaller than the patch size 64"):
        D.patches(imgs, 64, 1, seed=0)


def test_split_examples():
    ex = list(range(25))
    test, train = D.split_examples(ex, "test"), D.split_examples(ex, "train")
    assert test == [0, 10, 20] and sorted(test + train) == ex
    assert D.split_examples(ex, "valid") == test
    assert D.split_examples(ex, "test", every=1) == [] and D.split_examples(ex, "train", every=1) == ex
    with pytest.raises(ValueError):
        D.split_examples(ex, "dev")


def test_patch_split_never_shares_rows():
    H, W = 200, 50
    rows = np.broadcast_to(np.arange(H, dtype=np.float32)[None, :, None], (1, H, W)).copy()
    train = D.patch_split(rows, "train", 16, 200, seed=0)
    test = D.patch_split(rows, "test", 16, 200, seed=0)
    assert len(train) == len(test) == 200 and all(p.shape == (1, 16, 16) for p in train + test)
    train_rows = set(np.unique(np.concatenate([p.ravel() for p in train])))
    test_rows = set(np.unique(np.concatenate([p.ravel() for p in test])))
    assert not train_rows & test_rows
    assert max(train_rows) < H - 20 <= min(test_rows)  # band = max(16, 200 / 10) = 20 rows
    assert all(np.array_equal(a, b) for a, b in zip(train, D.patch_split(rows, "train", 16, 200, seed=0)))
    assert D.patch_split(rows, "test", 16, 5, seed=0, every=1) == []
    with pytest.raises(InputError, match="cannot hold a training region"):
        D.patch_split(rows[:, :30], "train", 16, 1, seed=0)


# ----------------------------------------------------------------------------- built-in data


def test_digits():
    d = D.load_digits()
    assert len(d) == 1797 and d.label_names == [str(i) for i in range(10)]
    imgs = np.stack([e["image"] for e in d.examples])
    assert imgs.shape == (1797, 1, 8, 8) and imgs.dtype == np.float32
    assert imgs.min() == 0.0 and imgs.max() == 1.0
    assert {e["label"] for e in d.examples} == set(d.label_names)
    assert d.examples[5]["file"] == "sklearn:digits[5]"


@pytest.mark.parametrize("name", D.SKIMAGE_IMAGES)
def test_every_skimage_image_loads(name):
    e = D.load_skimage(name)
    assert e["image"].ndim == 3 and e["image"].shape[0] in (1, 3) and e["image"].dtype == np.float32
    assert 0.0 <= e["image"].min() and e["image"].max() <= 1.0 and e["image"].max() > 0
    assert e["file"] == f"skimage:{name}" and e["bit_depth"] == 8


def test_skimage_channels_and_unknown():
    assert D.load_skimage("hubble_deep_field", channels=1)["image"].shape == (1, 872, 1000)
    assert D.load_skimage("moon", channels=3)["image"].shape == (3, 512, 512)
    with pytest.raises(InputError, match=r"skimage:nope: unknown built-in image; known: hubble_deep_field, cell"):
        D.load_skimage("nope")


def test_lfw_subset():
    f = D.load_lfw_subset()
    assert len(f) == 200 and f.label_names == []
    assert all(e["image"].shape == (1, 25, 25) and e["label"] is None for e in f.examples)
