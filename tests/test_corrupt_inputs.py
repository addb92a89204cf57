"""Property-based tests of the readers a user's files meet (SDF, XYZ, TOML configs, checkpoints,
WAV): random corruptions of a valid file are either read or refused with the clean input error
(``InputError``: a message naming the file), never another exception; sizes declared far beyond
the data are refused before anything that size is allocated. Hypothesis's deadline bounds the
time of every example."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciffusion.core.checkpoint import load_checkpoint
from sciffusion.core.domain import resolve_config
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True, database=None)


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    """``data`` after one to three random edits: truncation, byte changes, insertions, deletions,
    a duplicated slice."""
    out = bytearray(data)
    for op in draw(st.lists(st.sampled_from(["truncate", "change", "insert", "delete", "duplicate"]),
                            min_size=1, max_size=3)):
        at = draw(st.integers(0, len(out)))
        if op == "truncate":
            del out[at:]
        elif op == "change" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            out[at:at] = out[at:at + draw(st.integers(1, 256))]
    return bytes(out)


def read_or_refuse(read, path: Path) -> None:
    """Call ``read(path)``: any result is fine, an ``InputError`` must name the file."""
    try:
        read(path)
    except InputError as e:
        assert str(path) in str(e) or path.name in str(e), str(e)


# ------------------------------------------------------------------------------------------ molecules

def _molecules():
    from sciffusion.domains.molecules.types import Molecule

    water = Molecule([8, 1, 1], np.array([[0.0, 0, 0], [0.9572, 0, 0], [-0.24, 0.9266, 0.1]]), name="water")
    methane = Molecule([6, 1, 1, 1, 1], np.array([[0.0, 0, 0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629],
                                                  [-0.629, 0.629, -0.629], [0.629, -0.629, -0.629]]), name="methane")
    return [water, methane]


@pytest.fixture(scope="module")
def molecule_files(tmp_path_factory):
    from sciffusion.domains.molecules.output import write_sdf, write_xyz

    folder = tmp_path_factory.mktemp("valid")
    return {"sdf": write_sdf(folder / "m.sdf", _molecules()).read_bytes(),
            "xyz": write_xyz(folder / "m.xyz", _molecules()).read_bytes()}


@pytest.mark.parametrize("kind", ["sdf", "xyz"])
def test_corrupt_molecule_files_are_read_or_refused(kind, molecule_files, tmp_path):
    molecules = get_domain("molecules")

    @FUZZ
    @given(data=corrupted(molecule_files[kind]))
    def check(data):
        path = tmp_path / f"corrupt.{kind}"
        path.write_bytes(data)
        read_or_refuse(molecules.read, path)

    check()


def test_huge_declared_atom_counts_are_refused(tmp_path):
    from sciffusion.domains.molecules import data as D

    xyz = tmp_path / "huge.xyz"
    xyz.write_text("1000000000000\nhuge\nC 0 0 0\n")
    with pytest.raises(InputError, match=r"huge\.xyz: record 1 \('huge'\).*declares 1000000000000 atoms"):
        D.load_xyz(xyz)
    sdf = tmp_path / "huge.sdf"
    sdf.write_text("huge\n  x\n\n999999  0  0  0  0  0  0  0  0  0999 V2000\n"
                   "    0.0000    0.0000    0.0000 C   0  0\nM  END\n$$$$\n")
    with pytest.raises(InputError, match=r"huge\.sdf: record 1.*malformed counts line|huge\.sdf: record 1.*truncated"):
        D.load_sdf(sdf)


# ------------------------------------------------------------------------------------------ configs

def test_corrupt_config_files_are_read_or_refused(tmp_path):
    molecules = get_domain("molecules")
    valid = (ROOT / "domains" / "molecules" / "configs" / "qm9_flow.toml").read_bytes()

    @FUZZ
    @given(data=corrupted(valid))
    def check(data):
        path = tmp_path / "corrupt.toml"
        path.write_bytes(data)
        read_or_refuse(lambda p: resolve_config(molecules, p), path)

    check()


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    folder = get_domain("molecules").default_checkpoint()
    if folder is None:
        pytest.skip("the molecules domain ships no model in this checkout")
    copy = tmp_path_factory.mktemp("ckpt") / "valid"
    shutil.copytree(folder, copy)
    return copy


@pytest.mark.parametrize("name", ["checkpoint.json", "model.safetensors"])
def test_corrupt_checkpoints_are_read_or_refused(name, shipped, tmp_path):
    from sciffusion import api

    valid = (shipped / name).read_bytes()
    window = valid[:4096]  # the metadata, or the safetensors header and its first tensor bytes
    target = tmp_path / "ckpt"
    shutil.copytree(shipped, target)

    def info_unverified(path):
        ckpt = load_checkpoint(path, verify=False)
        ckpt.weights(prefer_ema=False)

    @FUZZ
    @given(data=corrupted(window))
    def check(data):
        (target / name).write_bytes(data + valid[4096:])
        read_or_refuse(api.info, target / name)
        read_or_refuse(info_unverified, target / name)

    check()


def test_checkpoint_metadata_of_the_wrong_shape_is_named(shipped, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(shipped, target)
    meta = json.loads((target / "checkpoint.json").read_text())
    for broken, problem in ((dict(meta, files="model.safetensors"), "'files' is str"),
                            (dict(meta, step="17000"), "'step' is str"),
                            ({k: v for k, v in meta.items() if k != "domain"}, "no 'domain'"),
                            (dict(meta, files={"../model.safetensors": meta["files"]["model.safetensors"]}),
                             "not a plain file name"),
                            (dict(meta, files={"model.safetensors": {"bytes": "1"}}), "lacks its 'bytes'")):
        (target / "checkpoint.json").write_text(json.dumps(broken))
        with pytest.raises(InputError, match=r"checkpoint\.json: corrupt checkpoint metadata \(.*" + problem):
            load_checkpoint(target)


def test_a_safetensors_header_declaring_a_huge_size_is_refused(shipped, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(shipped, target)
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + data[8:])
    with pytest.raises(InputError, match=r"model\.safetensors: unreadable safetensors file"):
        load_checkpoint(target, verify=False).weights(prefer_ema=False)


# ------------------------------------------------------------------------------------------ audio

def _wav_bytes(frames: int = 800, rate: int = 8000) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(frames) * 0.3) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


def test_corrupt_wav_files_are_read_or_refused(tmp_path):
    from sciffusion.domains.audio.data import load_audio_file

    @FUZZ
    @given(data=corrupted(_wav_bytes()))
    def check(data):
        path = tmp_path / "corrupt.wav"
        path.write_bytes(data)
        read_or_refuse(lambda p: load_audio_file(p, 8000), path)

    check()


def test_a_wav_declaring_gigabytes_is_refused_before_reading(tmp_path):
    from sciffusion.domains.audio.data import load_audio_file

    data = bytearray(_wav_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = struct.pack("<I", 0xFFFFFFF0)  # about 4 GiB declared, 1.6 kB present
    path = tmp_path / "huge.wav"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"huge\.wav: truncated WAV: the data chunk declares 4294967280 bytes"):
        load_audio_file(path, 8000)


def test_a_wav_whose_rate_would_need_a_huge_resampling_filter_is_refused(tmp_path):
    from sciffusion.domains.audio.data import load_audio_file

    data = bytearray(_wav_bytes())
    data[24:28] = struct.pack("<I", 44_101)  # the fmt chunk's sample rate: shares no factor with 8000
    path = tmp_path / "rate.wav"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"rate\.wav: sample rate 44101 Hz: resampling to 8000 Hz would build a filter of 353,352,000"):
        load_audio_file(path, 8000)
    data[24:28] = struct.pack("<I", 22050)  # a common rate still resamples
    path.write_bytes(bytes(data))
    assert load_audio_file(path, 8000).numel() == pytest.approx(800 * 8000 / 22050, abs=1)


@pytest.mark.parametrize("orig,new", [(22050, 8000), (44100, 8000), (8000, 16000), (1001, 1000), (1000, 7)])
def test_resample_filter_size_is_torchaudios(orig, new):
    import math

    from torchaudio.functional import functional as F

    from sciffusion.domains.audio.data import resample_filter_size

    kernel, _ = F._get_sinc_resample_kernel(orig, new, math.gcd(orig, new))
    assert resample_filter_size(orig, new) == kernel.numel()
