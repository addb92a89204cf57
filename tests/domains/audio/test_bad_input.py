"""Issue 12 ("bad input") for audio: a truncated WAV (its data chunk declares more bytes than the file
holds, which soundfile silently accepts) is an ``InputError`` naming the file, in the reader, in data
loading (skipped and counted with skip_bad), in ``evaluate`` and on the CLI; folders of ``.WAV`` /
``.Wav`` files are found wherever the audio domain or ``evaluate`` lists audio files."""

import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sciffusion import api
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.domains.audio import data as D
from sciffusion.domains.audio import domain as audio_domain_module
from sciffusion.domains.audio import vocoder as V

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
RATE = 8000
HEADER = 44  # RIFF header (12) + fmt chunk (8 + 16) + data chunk header (8), as the wave module writes it

torch.set_num_threads(1)


def samples(n: int = 8000) -> np.ndarray:
    return ((np.arange(n) % 200 - 100) * 50).astype("<i2")


def write_pcm16(path: Path, pcm: np.ndarray) -> Path:
    """A valid 16-bit mono 8 kHz WAV written by the standard library."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


def truncate(path: Path, data_bytes: int) -> Path:
    """Keep the 44-byte header and the first ``data_bytes`` of audio; the headers still claim the rest."""
    path.write_bytes(path.read_bytes()[:HEADER + data_bytes])
    return path


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    return struct.pack("<4sI", chunk_id, len(body)) + body + (b"\0" if len(body) % 2 else b"")


def wav_with_list_chunk(path: Path, pcm: np.ndarray, cut: int = 0) -> Path:
    """A WAV built by hand: fmt, an odd-sized LIST chunk (padded), then data; ``cut`` bytes removed
    from the end."""
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"LIST", b"INFOtxt") + chunk(b"data", pcm.tobytes())
    raw = b"RIFF" + struct.pack("<I", len(body)) + body
    path.write_bytes(raw[:len(raw) - cut])
    return path


# ----------------------------------------------------------------------------- the reader
def test_truncated_wav_is_an_error_naming_the_file(tmp_path):
    path = truncate(write_pcm16(tmp_path / "cut.wav", samples(8000)), 2000)
    assert sf.read(str(path))[0].shape == (1000,)  # what soundfile alone does: the frames present, silently
    with pytest.raises(InputError) as e:
        D.load_audio_file(path, RATE)
    assert str(e.value) == f"{path}: truncated WAV: the data chunk declares 16000 bytes, 2000 are present"


def test_valid_wav_still_reads_exactly(tmp_path):
    pcm = samples(8000)
    path = write_pcm16(tmp_path / "whole.wav", pcm)
    assert D.wav_data_problem(path) is None
    wave_ = D.load_audio_file(path, RATE)
    assert wave_.shape == (8000,)
    assert torch.equal(wave_, torch.from_numpy(pcm.astype(np.float32) / 32768))


def test_data_chunk_is_found_past_other_chunks(tmp_path):
    pcm = samples(500)
    whole = wav_with_list_chunk(tmp_path / "list.wav", pcm)
    assert D.wav_data_problem(whole) is None
    assert torch.equal(D.load_audio_file(whole, RATE), torch.from_numpy(pcm.astype(np.float32) / 32768))
    cut = wav_with_list_chunk(tmp_path / "list_cut.wav", pcm, cut=10)
    assert D.wav_data_problem(cut) == "truncated WAV: the data chunk declares 1000 bytes, 990 are present"


def test_files_that_are_not_riff_wave_are_left_to_soundfile(tmp_path):
    flac = tmp_path / "tone.flac"
    sf.write(str(flac), samples(800).astype(np.float32) / 32768, RATE)
    assert D.wav_data_problem(flac) is None and D.load_audio_file(flac, RATE).shape == (800,)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF")
    assert D.wav_data_problem(junk) is None
    with pytest.raises(InputError, match=f"{junk}: not a readable audio file"):
        D.load_audio_file(junk, RATE)


def test_folder_loading_raises_or_skips_and_counts_truncated_files(tmp_path):
    write_pcm16(tmp_path / "a.wav", samples(4000))
    cut = truncate(write_pcm16(tmp_path / "b.wav", samples(8000)), 2000)
    with pytest.raises(InputError, match=f"{cut}: truncated WAV"):
        D.load_audio_folder(tmp_path, RATE, label_pattern=None)
    clips = D.load_audio_folder(tmp_path, RATE, label_pattern=None, skip_bad=True)
    assert [p.name for p in clips.files] == ["a.wav"]
    assert clips.skipped == [(str(cut), "truncated WAV: the data chunk declares 16000 bytes, 2000 are present")]


# ----------------------------------------------------------------------------- evaluate and the CLI
@pytest.fixture
def no_fsdd(monkeypatch):
    """Standalone audio evaluation without the FSDD classifier (keeps these tests light)."""
    monkeypatch.setattr(audio_domain_module, "fsdd_root", lambda: None)


def test_evaluate_refuses_or_skips_a_truncated_wav(tmp_path, no_fsdd):
    write_pcm16(tmp_path / "a.wav", samples(4000))
    cut = truncate(write_pcm16(tmp_path / "b.wav", samples(8000)), 2000)
    with pytest.raises(InputError, match=f"{cut}: truncated WAV: the data chunk declares 16000 bytes"):
        api.evaluate("audio", [tmp_path])
    m = api.evaluate("audio", [tmp_path], skip_bad=True)
    assert m["files"] == 1 and m["skipped"] == 1 and m["duration_s"] == pytest.approx(0.5)


def test_cli_evaluate_truncated_wav_exits_1_with_one_line(tmp_path):
    cut = truncate(write_pcm16(tmp_path / "b.wav", samples(8000)), 2000)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([SCIFFUSION, "evaluate", "audio", str(tmp_path)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"{cut}: truncated WAV: the data chunk declares 16000 bytes, 2000 are present" in p.stderr


# ----------------------------------------------------------------------------- extensions in any case
@pytest.fixture
def mixed_case(tmp_path):
    """Upper- and mixed-case extensions, plus files that are not audio or are hidden."""
    for name in ("a.WAV", "b.Wav", "c.wav"):
        write_pcm16(tmp_path / name, samples(4000))
    sf.write(str(tmp_path / "d.FLAC"), samples(4000).astype(np.float32) / 32768, RATE)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "._a.WAV").write_bytes(b"macOS resource fork, not audio")
    return tmp_path


def test_listing_matches_extensions_in_any_case(mixed_case):
    assert [p.name for p in D.list_audio_files(mixed_case)] == ["a.WAV", "b.Wav", "c.wav", "d.FLAC"]
    assert [p.name for p in D.list_audio_files(mixed_case, (".wav",))] == ["a.WAV", "b.Wav", "c.wav"]
    assert [p.name for p in V._list_inputs(mixed_case)] == ["a.WAV", "b.Wav", "c.wav", "d.FLAC"]


def test_data_loading_reads_upper_case_files(mixed_case):
    clips = D.load_audio_folder(mixed_case, RATE, label_pattern=None, length=4000)
    assert [p.name for p in clips.files] == ["a.WAV", "b.Wav", "c.wav", "d.FLAC"] and clips.skipped == []
    assert clips.waves.shape == (4, 4000) and clips.waves.abs().max() > 0.1
    examples = get_domain("audio").load_dataset({"path": str(mixed_case), "label_pattern": "", "seconds": 0.5,
                                                 "split_every": 1}, "train")
    assert [Path(e["file"]).name for e in examples] == ["a.WAV", "b.Wav", "c.wav", "d.FLAC"]


def test_fsdd_root_finds_upper_case_recordings(tmp_path, monkeypatch):
    write_pcm16(tmp_path / "0_ann_0.WAV", samples(800))
    monkeypatch.setenv("SCIFFUSION_FSDD", str(tmp_path))
    assert D.fsdd_root() == tmp_path


def test_evaluate_finds_upper_case_wav_files(mixed_case, no_fsdd):
    m = api.evaluate("audio", [mixed_case])
    assert m["files"] == 3 and m["skipped"] == 0 and m["n"] == 3 and m["duration_s"] == pytest.approx(0.5)
    upper_only = mixed_case / "upper"
    upper_only.mkdir()
    write_pcm16(upper_only / "x.WAV", samples(2000))
    m = api.evaluate("audio", [upper_only])
    assert m["files"] == 1 and m["duration_s"] == pytest.approx(0.25)


def test_fsdd_names_with_upper_case_extensions_keep_their_labels_and_split(tmp_path):
    for name in ("3_ann_0.WAV", "7_bob_12.Wav", "5_cat_3.wav"):
        write_pcm16(tmp_path / name, samples(800))
    train = D.load_audio_folder(tmp_path, RATE, split="train", length=800)
    test = D.load_audio_folder(tmp_path, RATE, split="test", length=800)
    assert [p.name for p in train.files] == ["7_bob_12.Wav"]  # FSDD's split: takes 0-4 are the test split
    assert [p.name for p in test.files] == ["3_ann_0.WAV", "5_cat_3.wav"]
    assert [test.label_names[i] for i in test.labels] == ["3", "5"] and train.skipped == test.skipped == []
    assert D.name_for_patterns("0_x_0.WAV") == "0_x_0.wav" and D.name_for_patterns("README") == "README"
