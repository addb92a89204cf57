"""Audio outputs besides the WAV files: spectrogram pictures.

``spectrogram_png(path, mels, titles)`` draws normalised mels ([-1, 1], (n_mels, frames) each) as a
grid: with matplotlib when installed (labelled panels), else with Pillow (a plain grid of greyscale
panels, low frequencies at the bottom; titles are then not drawn). ``save_spectrograms(folder,
objects)`` writes one picture per object ``{stem}.png`` (objects are the dicts of
``AudioDomain.decode``/``read``; a missing mel is computed from the waveform).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.io import atomic_path

__all__ = ["spectrogram_png", "save_spectrograms", "write_wav"]


def write_wav(path: Path, wave, sample_rate: int, meta: dict, software: str) -> Path:
    """One 16-bit mono WAV, written atomically, samples clipped to [-1, 1]; ``meta`` as JSON in its comment."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16", format="WAV") as f:
            f.comment = json.dumps(meta)
            f.software = software
            f.write(np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0))
    return path


def _to_uint8(mel: np.ndarray) -> np.ndarray:
    m = np.clip((np.asarray(mel, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)
    return (255 * m[::-1]).astype(np.uint8)          # low mel bands at the bottom


def spectrogram_png(path: str | Path, mels: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                    columns: int = 4) -> Path:
    """Write a grid of normalised mel spectrograms to a PNG (atomically); return the path."""
    path = Path(path)
    mels = [np.asarray(m, dtype=np.float32).reshape(np.asarray(m).shape[-2:]) for m in mels]
    if not mels:
        raise ValueError("spectrogram_png: no mels to draw")
    titles = list(titles) if titles is not None else [""] * len(mels)
    cols = max(1, min(columns, len(mels)))
    rows = (len(mels) + cols - 1) // cols
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    with atomic_path(path) as tmp:
        if plt is not None:
            fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
            for ax in axes.ravel():
                ax.axis("off")
            for ax, m, title in zip(axes.ravel(), mels, titles):
                ax.imshow(m, origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
                ax.set_title(title, fontsize=8)
            fig.tight_layout()
            fig.savefig(tmp, format="png", dpi=80)
            plt.close(fig)
        else:
            try:
                from PIL import Image
            except ImportError:
                raise ImportError("spectrogram_png needs matplotlib or Pillow: pip install matplotlib") from None
            h = max(m.shape[0] for m in mels)
            w = max(m.shape[1] for m in mels)
            gap = 2
            canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 255, dtype=np.uint8)
            for i, m in enumerate(mels):
                r, c = divmod(i, cols)
                img = _to_uint8(m)
                canvas[r * (h + gap): r * (h + gap) + img.shape[0], c * (w + gap): c * (w + gap) + img.shape[1]] = img
            Image.fromarray(canvas, mode="L").save(tmp, format="PNG")
    return path


def save_spectrograms(folder: str | Path, objects: Sequence[dict], names: Sequence[str] | None = None,
                      mel_config=None) -> list[Path]:
    """One ``{name}.png`` per object in ``folder`` (names default to ``00000000``...)."""
    from .mel import DEFAULT_MEL, MelConfig, waveform_to_mel

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
        out.append(spectrogram_png(folder / f"{name}.png", [mel], [title]))
    return out
