"""PNG output: the encoder's files read back with Pillow to the same integers, 8 and 16 bits, gray
and RGB, with the metadata chunk; the grid picture has the panels it should."""

import json

import numpy as np
import pytest
from PIL import Image

from sciffusion.domains.images.output import METADATA_KEY, grid_png, png_bytes, quantise, write_png


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_bytes_read_back_exactly_with_pillow(tmp_path, channels, dtype):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    px = rng.integers(0, top + 1, size=(channels, 5, 7)).astype(dtype)
    px[0, 0, 0], px[-1, -1, -1] = 0, top
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(px, {"k": "v"}))
    with Image.open(path) as im:
        assert im.size == (7, 5) and im.text["k"] == "v"
        if dtype == np.uint16 and channels == 3:
            # Pillow decodes 16-bit RGB to 8 bits: its most significant bytes
            got = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
            assert np.array_equal(got, (px >> 8).astype(np.uint8))
        else:
            got = np.asarray(im)
            got = got[None] if channels == 1 else got.transpose(2, 0, 1)
            assert np.array_equal(got.astype(np.int64), px.astype(np.int64))


def test_png_bytes_refuses_what_png_cannot_hold():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        png_bytes(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        png_bytes(np.zeros((1, 4, 4), np.float32))


def test_quantise_rounds_to_nearest_and_clips():
    x = np.array([[[-0.5, 0.0, 0.501 / 255, 0.499 / 255, 1.0, 2.0]]])
    assert quantise(x, 8).tolist() == [[[0, 0, 1, 0, 255, 255]]]
    assert quantise(np.array([[[257 / 65535]]]), 16).tolist() == [[[257]]]


def test_write_png_keeps_8_bit_values_and_the_metadata(tmp_path):
    v = np.arange(256, dtype=np.float64).reshape(1, 16, 16) / 255.0
    path = write_png(tmp_path / "s.png", v, 8, {"seed": 3, "label": "7"})
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), np.arange(256).reshape(16, 16))
        assert json.loads(im.text[METADATA_KEY]) == {"seed": 3, "label": "7"}
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_grid_png_has_one_panel_per_image(tmp_path):
    imgs = [np.full((1, 8, 8), i / 9.0, np.float32) for i in range(10)]
    path = grid_png(tmp_path / "grid.png", imgs, [str(i) for i in range(10)], columns=4, cell=32)
    with Image.open(path) as im:
        a = np.asarray(im.convert("L")).astype(int)
    # 4 columns of 32-pixel tiles with 4-pixel gaps, 3 rows of 32 + 12 caption + 4
    assert a.shape == (3 * (32 + 12 + 4) + 4, 4 * (32 + 4) + 4)
    tiles = [a[4 + r * 48:4 + r * 48 + 32, 4 + c * 36:4 + c * 36 + 32] for r in range(3) for c in range(4)][:10]
    for i, t in enumerate(tiles):
        assert np.all(t == round(255 * i / 9.0)), i  # each tile is its image, enlarged 4x
    with pytest.raises(ValueError, match="no images"):
        grid_png(tmp_path / "none.png", [])
