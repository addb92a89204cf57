"""Audio inpainting: regenerate a time span of a clip consistently with the rest.

The mel frames whose analysis windows touch the span are free; every other frame is pinned to the
clip's own mel through the core's ``Inpaint`` constraint (the engine noises the known frames to the
current time at every step and sets them exactly at the end). Back in the waveform, the clip's own
samples are kept outside the span and the generated ones inside, joined by short linear crossfades
that lie inside the span, so nothing outside the span changes.

Configuration (``sample.*`` of the audio domain): ``inpaint`` = a WAV/FLAC file (any rate; resampled
to the model's), ``inpaint_span`` = [start_s, end_s] within the model's clip length, ``inpaint_fade``
= crossfade seconds (default 0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.io import InputError
from .mel import MelConfig, waveform_to_mel

__all__ = ["InpaintSpec", "load_inpaint_spec", "free_frames", "known_mask", "splice"]


@dataclass(frozen=True)
class InpaintSpec:
    file: str
    wave: torch.Tensor  # (L,) at the model's rate, zero-padded to the model's clip length
    start: int  # first regenerated sample
    end: int  # one past the last regenerated sample
    fade: int  # crossfade samples at each boundary, inside the span
    label_name: str | None  # the clip's own label, when its name or comment gives one


def _span_seconds(span, file: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in span)
    except (TypeError, ValueError):
        raise InputError(f"audio: sample.inpaint_span must be [start_s, end_s] (seconds within {file}), got {span!r}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or not 0.0 <= start < end:
        raise InputError(f"audio: sample.inpaint_span={[start, end]} must satisfy 0 <= start < end (seconds within {file})")
    return start, end


def load_inpaint_spec(sample_cfg: dict, mel_cfg: MelConfig, length: int, label_pattern: str | None) -> InpaintSpec | None:
    """The inpainting request of a sample config, or None when ``sample.inpaint`` is empty. Errors name
    the file: unreadable audio, a clip longer than the model's, a span outside the clip."""
    from .data import label_of, load_audio_file

    file = str(sample_cfg.get("inpaint") or "")
    if not file:
        return None
    path = Path(file).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: sample.inpaint names no such file")
    wave = load_audio_file(path, mel_cfg.sample_rate, downmix=True)
    rate = mel_cfg.sample_rate
    if wave.numel() > length:
        raise InputError(f"{path}: {wave.numel() / rate:.3f} s long; the model makes {length / rate:.3f} s clips "
                         "(trim the clip to the part around the span)")
    start_s, end_s = _span_seconds(sample_cfg.get("inpaint_span"), str(path))
    duration = wave.numel() / rate
    if end_s > duration + 1e-9:
        raise InputError(f"{path}: sample.inpaint_span ends at {end_s} s, after the clip's end ({duration:.3f} s)")
    start, end = int(round(start_s * rate)), min(int(round(end_s * rate)), wave.numel())
    if end <= start:
        raise InputError(f"{path}: sample.inpaint_span={[start_s, end_s]} is shorter than one sample")
    fade_s = float(sample_cfg.get("inpaint_fade", 0.01))
    if not (math.isfinite(fade_s) and fade_s >= 0):
        raise InputError(f"audio: sample.inpaint_fade must be >= 0 seconds, got {fade_s!r}")
    fade = min(int(round(fade_s * rate)), (end - start) // 2)
    padded = torch.zeros(length)
    padded[:wave.numel()] = wave
    label = label_of(path.name, label_pattern) if label_pattern else None
    return InpaintSpec(str(path), padded, start, end, fade, label)


def free_frames(spec: InpaintSpec, cfg: MelConfig, frames: int) -> tuple[int, int]:
    """Frames [f0, f1) whose (centred) analysis window overlaps the span [start, end): frame f covers
    samples [f hop - n_fft/2, f hop + n_fft/2)."""
    half = cfg.n_fft // 2
    f0 = max(0, (spec.start - half) // cfg.hop_length)
    if f0 * cfg.hop_length + half <= spec.start:
        f0 += 1
    f1 = min(frames, (spec.end - 1 + half) // cfg.hop_length + 1)
    return f0, f1


def known_mask(spec: InpaintSpec, cfg: MelConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip's normalised mel (batch, 1, n_mels, frames) and the mask (True = pinned) of the same shape."""
    mel = waveform_to_mel(spec.wave[None], cfg)  # (1, n_mels, frames)
    frames = mel.shape[-1]
    f0, f1 = free_frames(spec, cfg, frames)
    mask = torch.ones(1, 1, cfg.n_mels, frames, dtype=torch.bool)
    mask[..., f0:f1] = False
    return mel[:, None].expand(batch, -1, -1, -1).clone(), mask.expand(batch, -1, -1, -1).clone()


def splice(generated: torch.Tensor, spec: InpaintSpec) -> torch.Tensor:
    """The clip outside the span, ``generated`` inside, with linear crossfades of ``spec.fade`` samples
    at both ends of the span (inside it): w = (1 - r) clip + r generated, r rising 0 -> 1 into the span."""
    clip = spec.wave.to(generated.dtype)
    g = generated.reshape(-1)[:clip.numel()]
    r = torch.zeros_like(clip)
    r[spec.start:spec.end] = 1.0
    if spec.fade > 0:
        ramp = torch.arange(1, spec.fade + 1, dtype=clip.dtype) / (spec.fade + 1)
        r[spec.start:spec.start + spec.fade] = ramp
        r[spec.end - spec.fade:spec.end] = ramp.flip(0)
    return (1.0 - r) * clip + r * g
