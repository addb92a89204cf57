"""Audio outputs besides the WAV files: spectrogram pictures with real axes, and the classifier's
per-class accuracy.

``spectrogram_png(path, mels, titles, mel_config)`` draws normalised mels ([-1, 1], (n_mels, frames)
each) as a grid of panels (``core.pictures``): time in seconds across (frame t is centred on sample
t * hop_length, ``mel.frame_times``), the mel bands up the side at their own (mel) spacing, labelled
in Hz/kHz at the bands' centre frequencies (``mel.mel_frequencies``), coloured by level in dB (the
MelConfig's fixed normalisation undone, ``mel.mel_db``) with a colour bar per row. Tick and axis
labels are on every panel, axis names on the outer ones. ``save_spectrograms(folder, objects)``
writes one picture per object ``{stem}.png`` (objects are the dicts of ``AudioDomain.decode``/``read``;
a missing mel is computed from the waveform).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.io import atomic_path
from ...core.pictures import figure, grid_shape, save_figure
from .mel import DEFAULT_MEL, MelConfig, frame_times, mel_db, mel_frequencies

__all__ = ["spectrogram_png", "save_spectrograms", "write_wav", "frequency_ticks", "hz_label"]

#: candidate frequency ticks (Hz); those between the lowest and highest band centre are drawn
TICK_HZ = (100, 250, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000)
CMAP = "magma"


def write_wav(path: Path, wave, sample_rate: int, meta: dict, software: str) -> Path:
    """One 16-bit mono WAV, written atomically, samples clipped to [-1, 1]; ``meta`` as JSON in its comment."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16", format="WAV") as f:
            f.comment = json.dumps(meta)
            f.software = software
            f.write(np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0))
    return path


def hz_label(hz: float) -> str:
    """A frequency as a tick label: "250 Hz", "1 kHz", "1.5 kHz"."""
    return f"{hz:g} Hz" if hz < 1000 else f"{hz / 1000:g} kHz"


def frequency_ticks(cfg: MelConfig = DEFAULT_MEL) -> tuple[np.ndarray, list[str]]:
    """(positions in mel-band index units, labels) of the frequency axis: each ``TICK_HZ`` value
    within the band centres, placed by linear interpolation between the two bands around it; a
    tick closer than n_mels / 10 bands to the previous one is left out."""
    centres = mel_frequencies(cfg).numpy()
    bands = np.arange(cfg.n_mels, dtype=np.float64)
    positions, labels = [], []
    for hz in TICK_HZ:
        if not centres[0] <= hz <= centres[-1]:
            continue
        pos = float(np.interp(hz, centres, bands))
        if positions and pos - positions[-1] < cfg.n_mels / 10:
            continue
        positions.append(pos)
        labels.append(hz_label(hz))
    return np.array(positions), labels


def spectrogram_png(path: str | Path, mels: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                    mel_config: MelConfig | None = None, columns: int = 4, title: str = "") -> Path:
    """Write a grid of normalised mel spectrograms made with ``mel_config`` (default: ``DEFAULT_MEL``)
    to a PNG (atomically); return the path."""
    cfg = mel_config or DEFAULT_MEL
    mels = [np.asarray(m, dtype=np.float32).reshape(np.asarray(m).shape[-2:]) for m in mels]
    if not mels:
        raise ValueError("spectrogram_png: no mels to draw")
    bad = [m.shape for m in mels if m.shape[0] != cfg.n_mels]
    if bad:
        raise ValueError(f"spectrogram_png: mels of shape {bad[0]} do not have the {cfg.n_mels} bands of the mel settings")
    titles = list(titles) if titles is not None else [""] * len(mels)
    rows, cols = grid_shape(len(mels), columns)
    width, height = (6.0, 4.0) if len(mels) <= 2 else (3.4, max(2.6, 3.8 / rows))
    ticks, tick_labels = frequency_ticks(cfg)
    half_frame = 0.5 * cfg.hop_length / cfg.sample_rate
    with figure(rows, cols + 1, width=width * cols + 0.8, height=height,
                gridspec_kw={"width_ratios": [1.0] * cols + [0.04]}) as (fig, axes):
        row_image = [None] * rows
        for i, ax in enumerate(axes[:, :cols].flat):
            if i >= len(mels):
                ax.set_visible(False)
                continue
            r, c = divmod(i, cols)
            t = frame_times(mels[i].shape[1], cfg).numpy()
            row_image[r] = ax.imshow(mel_db(mels[i], cfg).numpy(), origin="lower", aspect="auto", cmap=CMAP,
                                     vmin=cfg.db_min, vmax=cfg.db_max, interpolation="nearest",
                                     extent=(t[0] - half_frame, t[-1] + half_frame, -0.5, cfg.n_mels - 0.5))
            ax.set_yticks(ticks, tick_labels, fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
            ax.set_title(titles[i], fontsize=9)
            if i + cols >= len(mels):          # nothing below it: the outer panel of its column
                ax.set_xlabel("time (s)", fontsize=9)
            if c == 0:
                ax.set_ylabel("frequency (mel-spaced)", fontsize=9)
        for r in range(rows):
            bar = fig.colorbar(row_image[r], cax=axes[r][cols])
            bar.set_label("log-mel level (dB)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


def save_spectrograms(folder: str | Path, objects: Sequence[dict], names: Sequence[str] | None = None,
                      mel_config=None) -> list[Path]:
    """One ``{name}.png`` per object in ``folder`` (names default to ``00000000``...)."""
    from .mel import waveform_to_mel

    import torch

    cfg = mel_config if isinstance(mel_config, MelConfig) else (
        MelConfig.from_dict(mel_config) if isinstance(mel_config, dict) else DEFAULT_MEL)
    folder = Path(folder)
    out = []
    for i, obj in enumerate(objects):
        mel = obj.get("mel")
        if mel is None:
            mel = waveform_to_mel(torch.as_tensor(obj["wave"], dtype=torch.float32), cfg).numpy()
        name = names[i] if names is not None else f"{i:08d}"
        title = f"label {obj.get('label_name', obj.get('label', ''))}"
        out.append(spectrogram_png(folder / f"{name}.png", [mel], [title], mel_config=cfg))
    return out


