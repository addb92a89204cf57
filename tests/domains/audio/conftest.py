"""Synthesised audio shared by the audio tests: four labelled kinds of tone, ten takes each, 0.5 s
at 8 kHz, named ``{label}_synth_{take}.wav`` (label pattern ``SYNTH_PATTERN`` in the tests)."""

import numpy as np
import pytest
import soundfile as sf

RATE = 8000
TONES = {"low": 300.0, "mid": 900.0, "high": 2000.0, "sweep": None}


def tone(label: str, i: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    f = TONES[label]
    if f is None:
        phase = 2 * np.pi * (200 * t + 2400 * t ** 2)
    else:
        phase = 2 * np.pi * f * (1 + 0.02 * i) * t
    return (0.3 * np.sin(phase) * np.hanning(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth-audio")
    for label in TONES:
        for i in range(10):
            sf.write(str(d / f"{label}_synth_{i}.wav"), tone(label, i), RATE, subtype="PCM_16")
    return d
