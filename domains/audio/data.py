"""Folders of audio (WAV/FLAC) as tensors: labels, splits, resampling, fixed or variable length.

``load_audio_folder`` reads every ``*.wav`` / ``*.flac`` of a folder (``list_audio_files``: any
case, ``.WAV`` too; hidden files left out) with soundfile (no system audio libraries), resamples to
the configured rate with ``torchaudio.functional.resample``, takes labels from a file-name regex
with a named group ``label`` (default: FSDD's ``{digit}_{speaker}_{take}.wav``) or from a CSV
``file,label``, keeps one split, and returns ``AudioClips``. Bad files (unreadable, truncated WAV,
empty, wrong channel count, unexpected rate, NaN/inf samples, no label) raise ``InputError`` naming
the file and the reason, or are skipped and listed in ``AudioClips.skipped`` with ``skip_bad=True``.

The Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0, Zohar Jackson and contributors) is read in
place: ``fsdd_root()`` finds it, ``load_fsdd(split)`` loads it.
"""

from __future__ import annotations

import csv
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from sciffusion.core.io import InputError

from .mel import mel_config_of, num_frames

__all__ = ["AudioClips", "GroupSplit", "EveryKSplit", "FSDD_PATTERN", "FSDD_SPLIT", "AUDIO_EXTENSIONS",
           "list_audio_files", "label_of", "wav_data_problem", "load_audio_folder", "load_audio_file", "crop_or_pad",
           "fsdd_root", "load_fsdd", "split_rule", "load_examples", "clips_data_config"]

FSDD_PATTERN = r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"
AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass(frozen=True)
class GroupSplit:
    """Split by a named regex group of the file name: files whose ``group`` value is in
    ``test_values`` form the test split, the others the train split (files that do not match
    the pattern are bad files)."""

    pattern: str
    group: str
    test_values: frozenset

    def is_test(self, name: str) -> bool | None:
        m = re.match(self.pattern, name_for_patterns(name))
        if m is None or self.group not in m.groupdict():
            return None
        return m.group(self.group) in self.test_values


def name_for_patterns(name: str) -> str:
    """A file name as label and split patterns see it: its extension in lower case (``0_x_0.WAV``
    matches FSDD's ``...\\.wav$`` like ``0_x_0.wav``), the rest as it is."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{ext.lower()}" if dot else name


def label_of(name: str, pattern: str) -> str | None:
    """The ``label`` group of ``pattern`` matched against a file name (as ``name_for_patterns``
    shows it), or None when the name does not match or the pattern has no such group."""
    m = re.match(pattern, name_for_patterns(name))
    return m.group("label") if m and "label" in m.groupdict() else None


@dataclass(frozen=True)
class EveryKSplit:
    """Generic split: in sorted file order, file i is a test file when ``i % k == offset``."""

    k: int = 10
    offset: int = 0


FSDD_SPLIT = GroupSplit(FSDD_PATTERN, "take", frozenset({"0", "1", "2", "3", "4"}))  # upstream split


@dataclass
class AudioClips:
    """Loaded clips.

    ``waves``: (N, L) float32 when a fixed length was asked, else a list of 1-D float32 tensors;
    ``lengths``: (N,) samples of real audio in each clip (after crop, before padding);
    ``mask``: (N, L) bool, True on real audio (fixed length only, else None);
    ``labels``: (N,) int64 indices into ``label_names`` (None when unlabelled);
    ``files``: source paths; ``skipped``: (file, reason) of bad files skipped."""

    waves: torch.Tensor | list
    lengths: torch.Tensor
    mask: torch.Tensor | None
    labels: torch.Tensor | None
    label_names: list
    files: list
    sample_rate: int
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fixed_length(self) -> int | None:
        return int(self.waves.shape[1]) if isinstance(self.waves, torch.Tensor) else None


def crop_or_pad(wave: torch.Tensor, length: int, pad: str = "end") -> tuple[torch.Tensor, int, torch.Tensor]:
    """Fixed length: centre crop when longer, zero pad (at the end, or both sides with
    ``pad="centre"``) when shorter. Returns (wave, real samples, mask)."""
    n = wave.shape[-1]
    mask = torch.zeros(length, dtype=torch.bool)
    if n >= length:
        start = (n - length) // 2
        mask[:] = True
        return wave[start:start + length].clone(), length, mask
    out = torch.zeros(length, dtype=wave.dtype)
    start = (length - n) // 2 if pad == "centre" else 0
    out[start:start + n] = wave
    mask[start:start + n] = True
    return out, n, mask


def list_audio_files(folder: str | Path, extensions: tuple = AUDIO_EXTENSIONS) -> list[Path]:
    """The audio files directly inside ``folder``, sorted by name. Extensions match in any case
    (``.WAV``, ``.Wav``); hidden files (``.name``, e.g. macOS's ``._clip.wav``) are left out."""
    exts = {e.lower() for e in extensions}
    found = (p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)
    return sorted(found, key=lambda p: p.name)


def _data_chunk(f, file_size: int) -> tuple[int, int] | None:
    """(offset of the body, declared size) of the ``data`` chunk of an open RIFF file, walking the
    chunk headers after the 12-byte RIFF header (bodies padded to even sizes); None if not found."""
    offset = 12
    while offset + 8 <= file_size:
        f.seek(offset)
        chunk_id, declared = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"data":
            return offset + 8, declared
        offset += 8 + declared + (declared & 1)
    return None


def wav_data_problem(path: str | Path) -> str | None:
    """Why a RIFF/WAVE file's audio is incomplete, else None: its data chunk declaring more bytes
    than the file holds after the chunk header (libsndfile silently returns the frames present).
    Files that are not RIFF/WAVE (FLAC, RF64, RIFX), cannot be opened or have no findable data
    chunk are left to soundfile, which names its own error."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return None
            chunk = _data_chunk(f, file_size)
    except OSError:
        return None  # soundfile reports the file as unreadable
    if chunk is None:
        return None
    body, declared = chunk
    present = file_size - body
    if declared > present:
        return f"truncated WAV: the data chunk declares {declared} bytes, {present} are present"
    return None


MAX_RESAMPLE_FILTER = 5_000_000  # elements of the sinc filter bank resampling may build (about 5x in memory while built)
MAX_SAMPLES = 100_000_000  # samples of one resampled clip (400 MB as float32)


def resample_filter_size(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Elements of the sinc filter bank that resampling ``orig`` -> ``new`` Hz builds (torchaudio's
    polyphase method): with o, n the rates divided by their gcd, n filters of o + 2 w taps, where
    w = ceil(lowpass_filter_width * o / (rolloff * min(o, n)))."""
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    width = math.ceil(lowpass_filter_width * o / (rolloff * min(o, n)))
    return n * (o + 2 * width)


def resampling_problem(orig: int, new: int, samples: int) -> str | None:
    """Why resampling ``samples`` samples from ``orig`` to ``new`` Hz would take unbounded memory
    (a rate that shares no large factor with the target, or a clip that grows past MAX_SAMPLES), else None."""
    size = resample_filter_size(orig, new)
    if size > MAX_RESAMPLE_FILTER:
        return (f"sample rate {orig} Hz: resampling to {new} Hz would build a filter of "
                f"{size:,} elements; convert the file to a common rate first")
    if samples * new / orig > MAX_SAMPLES:
        return f"sample rate {orig} Hz: {samples} samples would become {samples * new / orig:,.0f} at {new} Hz"
    return None


def load_audio_file(path: str | Path, sample_rate: int, *, mono: bool = True, downmix: bool = False,
                    resample: bool = True) -> torch.Tensor:
    """One file as a 1-D float32 tensor at ``sample_rate``; ``InputError`` naming the file and the
    problem otherwise. ``mono`` requires one channel unless ``downmix`` averages the channels."""
    path = Path(path)
    truncated = wav_data_problem(path)
    if truncated:
        raise InputError(f"{path}: {truncated}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise InputError(f"{path}: not a readable audio file ({type(e).__name__}: {e})") from None
    if data.shape[0] == 0:
        raise InputError(f"{path}: empty audio file (0 samples)")
    if data.shape[1] != 1:
        if downmix:
            data = data.mean(axis=1, keepdims=True)
        elif mono:
            raise InputError(f"{path}: has {data.shape[1]} channels, mono audio required "
                             "(downmix=True averages the channels)")
        else:
            raise InputError(f"{path}: multi-channel audio ({data.shape[1]} channels) is not supported")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if rate != sample_rate:
        if not resample:
            raise InputError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (resampling is off)")
        problem = resampling_problem(rate, sample_rate, wave.numel())
        if problem:
            raise InputError(f"{path}: {problem}")
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
        if wave.numel() == 0:
            raise InputError(f"{path}: empty after resampling {rate} -> {sample_rate} Hz")
    return wave


def _read_label_csv(csv_path: Path, root: Path) -> list[tuple[Path, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{csv_path}: cannot read label CSV ({e})") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["file", "label"]:
        raise InputError(f"{csv_path}: label CSV must start with the header 'file,label'")
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{csv_path}: line {i}: expected 'file,label', got {row!r}")
        out.append((root / row[0].strip(), row[1].strip()))
    if not out:
        raise InputError(f"{csv_path}: label CSV lists no files")
    return out


def load_audio_folder(root: str | Path, sample_rate: int = 8000, *, label_pattern: str | None = FSDD_PATTERN,
                      labels_csv: str | Path | None = None, label_names: list | None = None,
                      split: str | None = None, split_rule: GroupSplit | EveryKSplit | None = None,
                      length: int | None = None, pad: str = "end", mono: bool = True, downmix: bool = False,
                      resample: bool = True, skip_bad: bool = False,
                      extensions: tuple = AUDIO_EXTENSIONS) -> AudioClips:
    """Load a folder of audio.

    Labels: ``labels_csv`` (header ``file,label``; paths relative to ``root``; its files are the
    files loaded), else ``label_pattern`` (a regex with a named group ``label`` matched against
    the file name; a non-matching file is a bad file), else unlabelled (both None).
    ``label_names`` fixes the label order (default: sorted distinct labels).
    ``split``: None (all), "train" or "test" under ``split_rule`` (default ``FSDD_SPLIT`` for the
    FSDD pattern, else ``EveryKSplit(10)``).
    ``length``: samples per clip (centre crop / zero pad, see ``crop_or_pad``), None = variable."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: audio folder not found")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    if pad not in ("end", "centre"):
        raise ValueError(f"pad must be 'end' or 'centre', got {pad!r}")
    if labels_csv is not None:
        entries = _read_label_csv(Path(labels_csv), root)
    else:
        entries = [(p, None) for p in list_audio_files(root, extensions)]
        if not entries:
            raise InputError(f"{root}: no audio files ({', '.join(extensions)})")
    entries.sort(key=lambda e: e[0].name)
    skipped: list[tuple[str, str]] = []

    def bad(path: Path, reason: str):
        if not skip_bad:
            raise InputError(f"{path}: {reason}")
        skipped.append((str(path), reason))

    # labels from the file name
    if labels_csv is None and label_pattern is not None:
        rx = re.compile(label_pattern)
        if "label" not in rx.groupindex:
            raise ValueError(f"label_pattern needs a named group 'label': {label_pattern!r}")
        kept = []
        for p, _ in entries:
            m = rx.match(name_for_patterns(p.name))
            if m is None:
                bad(p, f"file name does not match the label pattern {label_pattern!r}")
            else:
                kept.append((p, m.group("label")))
        entries = kept

    # split
    if split is not None:
        rule = split_rule or (FSDD_SPLIT if label_pattern == FSDD_PATTERN and labels_csv is None else EveryKSplit(10))
        kept = []
        for i, (p, lab) in enumerate(entries):
            if isinstance(rule, EveryKSplit):
                is_test = i % rule.k == rule.offset
            else:
                is_test = rule.is_test(p.name)
                if is_test is None:
                    bad(p, f"file name has no group {rule.group!r} for the split (pattern {rule.pattern!r})")
                    continue
            if is_test == (split == "test"):
                kept.append((p, lab))
        entries = kept

    waves, lengths, masks, labs, files = [], [], [], [], []
    for p, lab in entries:
        if not p.is_file():
            bad(p, "file listed in the label CSV does not exist")
            continue
        try:
            w = load_audio_file(p, sample_rate, mono=mono, downmix=downmix, resample=resample)
        except InputError as e:
            if not skip_bad:
                raise
            skipped.append((str(p), str(e).split(": ", 1)[-1]))
            continue
        if length is not None:
            w, n, m = crop_or_pad(w, length, pad)
            masks.append(m)
        else:
            n = w.numel()
        waves.append(w)
        lengths.append(n)
        labs.append(lab)
        files.append(p)
    if not files:
        raise InputError(f"{root}: no usable audio files" + (f" ({len(skipped)} bad files skipped)" if skipped else "")
                         + (f" in split {split!r}" if split else ""))

    labelled = labels_csv is not None or label_pattern is not None
    if labelled:
        names = list(label_names) if label_names is not None else sorted(set(labs))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(labs) - set(index))
        if unknown:
            raise InputError(f"{root}: labels {unknown} are not in label_names {names}")
        labels = torch.tensor([index[x] for x in labs], dtype=torch.int64)
    else:
        names, labels = [], None
    if length is not None:
        waves_out = torch.stack(waves)
        mask = torch.stack(masks)
    else:
        waves_out, mask = waves, None
    return AudioClips(waves_out, torch.tensor(lengths, dtype=torch.int64), mask, labels, names, files,
                      sample_rate, skipped)


def fsdd_root() -> Path | None:
    """The FSDD ``recordings`` folder: ``$SCIFFUSION_FSDD`` (the recordings folder or its parent),
    else ``../shared/data/fsdd/recordings`` beside the repository; None when absent."""
    candidates = []
    env = os.environ.get("SCIFFUSION_FSDD")
    if env:
        candidates += [Path(env) / "recordings", Path(env)]
    repo = Path(__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / "fsdd" / "recordings")
    for c in candidates:
        if c.is_dir() and list_audio_files(c, (".wav",)):
            return c
    return None


def load_fsdd(split: str | None = None, length: int | None = 8000, *, root: str | Path | None = None,
              pad: str = "end") -> AudioClips:
    """FSDD (8 kHz, labels 0-9, upstream take split: takes 0-4 test, 5-49 train), 1 s clips by
    default. Raises ``InputError`` when the dataset cannot be found."""
    root = Path(root) if root is not None else fsdd_root()
    if root is None:
        raise InputError("FSDD not found: set SCIFFUSION_FSDD or place it at ../shared/data/fsdd/recordings")
    return load_audio_folder(root, 8000, label_pattern=FSDD_PATTERN, split=split, split_rule=FSDD_SPLIT,
                             length=length, pad=pad, label_names=[str(d) for d in range(10)])


# ----------------------------------------------------------------------------- the [data] table's examples
# shared by the audio domain (mel model) and the vocoder domain, which read the same files


SPLIT_PARTS = {"train": "train", "valid": "test", "test": "test"}


def split_rule(data_cfg: dict, pattern: str | None) -> GroupSplit | EveryKSplit:
    """The train/test rule of a ``[data]`` table: by a named group of the file name
    (``split_group``), FSDD's upstream take split for the FSDD pattern, else every k-th file."""
    group = data_cfg.get("split_group") or ""
    if group:
        if not pattern:
            raise InputError("audio: data.split_group needs a data.label_pattern with that named group")
        return GroupSplit(pattern, group, frozenset(str(v) for v in data_cfg.get("split_test_values") or []))
    if pattern == FSDD_PATTERN and not data_cfg.get("labels_csv"):
        return FSDD_SPLIT
    return EveryKSplit(max(1, int(data_cfg.get("split_every", 10))), 0)


def clip_samples(data_cfg: dict) -> int:
    """Samples per clip: ``data.seconds`` at ``data.sample_rate``."""
    seconds = float(data_cfg.get("seconds", 1.0))
    if not seconds > 0:
        raise InputError(f"audio: data.seconds must be positive, got {seconds!r}")
    return int(round(seconds * int(data_cfg.get("sample_rate", 8000))))


def data_root(data_cfg: dict) -> Path | str:
    """``data.path``, or FSDD when it is empty (an error naming the ways to give data when FSDD is absent)."""
    root = data_cfg.get("path") or ""
    if root:
        return root
    found = fsdd_root()
    if found is None:
        raise InputError("audio: data.path is empty and the Free Spoken Digit Dataset was not found "
                         "(set SCIFFUSION_FSDD to its folder, place it at ../shared/data/fsdd/recordings, "
                         "or give data.path=FOLDER of WAV/FLAC files)")
    return found


def load_examples(data_cfg: dict, split: str) -> list[dict]:
    """Examples of a split ("train", "valid" = "test") of a ``[data]`` table: dicts ``{"wave",
    "label" (str or None), "sample_rate", "file"}``, clips cropped/padded to ``data.seconds``. A
    split rule that leaves no test files gives an empty test split."""
    part = SPLIT_PARTS.get(split)
    if part is None:
        raise ValueError(f"audio: unknown split {split!r}")
    length = clip_samples(data_cfg)
    root = data_root(data_cfg)
    pattern = data_cfg.get("label_pattern") or None
    rule = split_rule(data_cfg, pattern)
    whole = isinstance(rule, EveryKSplit) and int(data_cfg.get("split_every", 10)) <= 1
    if whole and part == "test":
        return []
    try:
        clips = load_audio_folder(root, int(data_cfg.get("sample_rate", 8000)), label_pattern=pattern,
                                  labels_csv=data_cfg.get("labels_csv") or None, split=None if whole else part,
                                  split_rule=rule, length=length, downmix=bool(data_cfg.get("downmix")),
                                  skip_bad=bool(data_cfg.get("skip_bad")))
    except InputError as e:
        if part == "test" and "no usable audio files" in str(e):
            return []
        raise
    return clips_as_examples(clips)


def clips_as_examples(clips: AudioClips) -> list[dict]:
    names = clips.label_names
    return [{"wave": clips.waves[i], "label": names[int(clips.labels[i])] if clips.labels is not None else None,
             "sample_rate": clips.sample_rate, "file": str(clips.files[i])} for i in range(len(clips))]


def clips_data_config(train_examples, cfg: dict) -> dict:
    """The facts a checkpoint keeps of its training clips: source, mel settings, rate, clip length
    and frames, label names (sorted) and counts (empty when any clip is unlabelled)."""
    if not train_examples:
        raise InputError("audio: the training split is empty")
    data_cfg = cfg.get("data", {})
    mel = mel_config_of(cfg)
    samples = int(train_examples[0]["wave"].shape[-1])
    labels = [e["label"] for e in train_examples]
    names = [] if any(lab is None for lab in labels) else sorted(set(labels))
    return {
        "source": "fsdd" if not data_cfg.get("path") else str(data_cfg["path"]),
        "mel": mel.to_dict(),
        "sample_rate": mel.sample_rate,
        "samples": samples,
        "seconds": samples / mel.sample_rate,
        "n_mels": mel.n_mels,
        "frames": num_frames(samples, mel),
        "label_names": names,
        "label_counts": [labels.count(n) for n in names],
    }
