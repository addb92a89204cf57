"""One frozen log-mel representation for the audio domain, and its (approximate) inverse.

``MelConfig`` holds every setting that shapes a mel spectrogram: sample rate, STFT (n_fft, window,
hop), mel filterbank (n_mels, f_min, f_max, mel scale, filter normalisation), magnitude power, log
floor and the fixed dB normalisation constants. It is saved with every checkpoint and compared with
``check_compatible`` whenever a model meets audio or mels, so that mels made with other settings
are refused instead of silently misread.

Forward (``waveform_to_mel``)::

    S   = |STFT(wav)| ** power                      (hann window, centred frames, reflect padding)
    M   = fbank^T S                                 (n_mels x frames)
    dB  = (20 if power == 1 else 10) * log10(max(M, log_floor))
    mel = clamp(2 * (dB - db_min) / (db_max - db_min) - 1, -1, 1)

Fixed constants (never per-clip maxima), so levels survive and a mel can be inverted.
Inverse (``mel_to_waveform``): un-normalise, non-negative least squares for the linear spectrogram
(pseudo-inverse start, projected gradient refinement; robust to empty or duplicate mel filters),
then Griffin-Lim.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torchaudio

from ...core.io import InputError

__all__ = ["MelConfig", "MelConfigMismatch", "DEFAULT_MEL", "waveform_to_mel", "mel_to_waveform",
           "mel_to_linear", "denormalise_mel", "mel_filterbank", "stft_magnitude", "num_frames", "clip_wave",
           "mel_config_of", "run_mel_config", "check_mel", "mel_db", "mel_frequencies", "frame_times"]


class MelConfigMismatch(ValueError):
    """Two mel configurations that must agree do not (e.g. a checkpoint's and the data's)."""


def clip_wave(example: dict, mel: "MelConfig", who: str):
    """The example's waveform as a float32 1-D tensor, after checking that its sample rate (and mel
    settings, when it carries them) match ``mel``; ``who`` names the domain in the error."""
    where = f"{who}: clip {example.get('file', '')}"
    if int(example.get("sample_rate", mel.sample_rate)) != mel.sample_rate:
        raise MelConfigMismatch(f"{where} is at {example['sample_rate']} Hz, the model's mel settings expect "
                                f"{mel.sample_rate} Hz")
    if "mel_config" in example:
        mel.check_compatible(example["mel_config"], f"{where} vs the model")
    return torch.as_tensor(example["wave"], dtype=torch.float32).reshape(-1)


@dataclass(frozen=True)
class MelConfig:
    """Frozen, serialisable mel settings. Defaults suit 8 kHz speech (FSDD): 32 ms windows,
    8 ms hop (125 frames per second), 64 mel bands over 0-4 kHz, magnitude (power 1)."""

    sample_rate: int = 8000
    n_fft: int = 256
    win_length: int = 256
    hop_length: int = 64
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 4000.0
    power: float = 1.0
    mel_scale: str = "htk"
    mel_norm: str | None = None
    log_floor: float = 1e-5
    db_min: float = -100.0
    db_max: float = 40.0
    version: int = 1

    def __post_init__(self):
        problems = []
        if self.sample_rate <= 0:
            problems.append("sample_rate must be positive")
        if not 0 < self.win_length <= self.n_fft:
            problems.append("need 0 < win_length <= n_fft")
        if self.hop_length <= 0:
            problems.append("hop_length must be positive")
        if self.n_mels <= 0:
            problems.append("n_mels must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append("need 0 <= f_min < f_max <= sample_rate / 2")
        if self.power not in (1.0, 2.0):
            problems.append("power must be 1 (magnitude) or 2 (power)")
        if self.mel_scale not in ("htk", "slaney"):
            problems.append("mel_scale must be 'htk' or 'slaney'")
        if self.mel_norm not in (None, "slaney"):
            problems.append("mel_norm must be None or 'slaney'")
        if not self.log_floor > 0:
            problems.append("log_floor must be positive")
        if not self.db_max > self.db_min:
            problems.append("need db_max > db_min")
        if problems:
            raise ValueError("invalid MelConfig: " + "; ".join(problems))

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def db_scale(self) -> float:
        return 20.0 if self.power == 1.0 else 10.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MelConfigMismatch(f"unknown MelConfig field(s) {unknown}: saved by a newer version?")
        d = dict(d)
        for k in ("f_min", "f_max", "power", "log_floor", "db_min", "db_max"):
            if k in d:
                d[k] = float(d[k])
        return cls(**d)

    def check_compatible(self, other: "MelConfig | dict", where: str = "") -> None:
        """Raise ``MelConfigMismatch`` listing every field that differs (``where`` says which
        model/data met, e.g. ``"checkpoint run1/model vs data folder"``)."""
        if isinstance(other, dict):
            other = MelConfig.from_dict(other)
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
        if diffs:
            at = f" ({where})" if where else ""
            raise MelConfigMismatch(f"mel configuration mismatch{at}: " + "; ".join(diffs)
                                    + ". Mels must be computed with the settings the model was trained with.")


DEFAULT_MEL = MelConfig()


def _is_stored(d: Mapping) -> bool:
    """A data config as checkpoints store it: a complete ``mel`` table and no ``data`` table."""
    return isinstance(d.get("mel"), Mapping) and "n_fft" in d["mel"] and "data" not in d


def run_mel_config(data: Mapping) -> MelConfig:
    """The MelConfig a ``[data]`` table asks for: its ``sample_rate``, ``f_max`` = min(4 kHz,
    Nyquist), then its ``mel`` overrides (any MelConfig field)."""
    sr = int(data.get("sample_rate", 8000))
    fields = {"sample_rate": sr, "f_max": float(min(4000.0, sr / 2))}
    fields.update(data.get("mel") or {})
    try:
        return MelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise InputError(f"audio: invalid data.mel settings {data.get('mel')}: {e}") from None


def mel_config_of(cfg_or_data_config: Mapping) -> MelConfig:
    """The MelConfig of a data config (``{"mel": {...}}``, as checkpoints store it) or of a run
    config (its ``data`` table; a bare ``data`` table works too)."""
    d = cfg_or_data_config
    if _is_stored(d):
        return MelConfig.from_dict(d["mel"])
    return run_mel_config(d.get("data", d))


def check_mel(data_config: Mapping, other: "MelConfig | dict", where: str) -> MelConfig:
    """The data config's MelConfig; ``MelConfigMismatch`` unless ``other`` equals it (``where``
    says which model and data met)."""
    mine = mel_config_of(data_config)
    mine.check_compatible(other, where)
    return mine


def num_frames(num_samples: int, cfg: MelConfig) -> int:
    """Frames of a centred STFT of ``num_samples`` samples."""
    return num_samples // cfg.hop_length + 1


@functools.lru_cache(maxsize=16)
def _mel_transform(cfg: MelConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=cfg.power, center=True,
        pad_mode="reflect", norm=cfg.mel_norm, mel_scale=cfg.mel_scale)


@functools.lru_cache(maxsize=16)
def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """The (n_freqs, n_mels) filterbank used by ``waveform_to_mel`` (float32)."""
    return _mel_transform(cfg).mel_scale.fb.detach().clone()


def _as_batch(wav: torch.Tensor) -> tuple[torch.Tensor, bool]:
    wav = torch.as_tensor(wav)
    if wav.dim() == 1:
        return wav[None], True
    if wav.dim() != 2:
        raise ValueError(f"expected a waveform of shape (samples,) or (batch, samples), got {tuple(wav.shape)}")
    return wav, False


def stft_magnitude(wav: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """|STFT| (magnitude, power 1) with the config's window and hop: (..., n_freqs, frames)."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    window = torch.hann_window(cfg.win_length, device=wav.device)
    shape = wav.shape
    spec = torch.stft(wav.reshape(-1, shape[-1]), cfg.n_fft, cfg.hop_length, cfg.win_length, window,
                      center=True, pad_mode="reflect", return_complex=True)
    return spec.abs().reshape(*shape[:-1], spec.shape[-2], spec.shape[-1])


def waveform_to_mel(wav: torch.Tensor, cfg: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """Normalised log-mel in [-1, 1]: (samples,) -> (n_mels, frames); (B, samples) -> (B, n_mels, frames).
    The waveform must already be at ``cfg.sample_rate`` (float, nominally in [-1, 1])."""
    x, single = _as_batch(wav)
    if not torch.is_floating_point(x):
        raise ValueError("waveform must be a float tensor")
    m = _mel_transform(cfg).to(x.device)(x.float())
    db = cfg.db_scale * torch.log10(torch.clamp(m, min=cfg.log_floor))
    mel = torch.clamp(2.0 * (db - cfg.db_min) / (cfg.db_max - cfg.db_min) - 1.0, -1.0, 1.0)
    return mel[0] if single else mel


def mel_db(mel: torch.Tensor, cfg: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """Levels in dB of a normalised mel (the fixed normalisation undone): [-1, 1] -> [db_min, db_max]."""
    return (torch.as_tensor(mel, dtype=torch.float32) + 1.0) * 0.5 * (cfg.db_max - cfg.db_min) + cfg.db_min


def denormalise_mel(mel: torch.Tensor, cfg: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """Inverse of the normalisation: linear mel energies (magnitude ** power)."""
    return torch.pow(10.0, mel_db(mel, cfg) / cfg.db_scale)


def _hz_to_mel(hz: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    # Slaney: linear (3 bands per 200 Hz) below 1 kHz, logarithmic above (27 bands per factor 6.4)
    return torch.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + torch.log(hz / 1000.0) * 27.0 / math.log(6.4))


def _mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)
    return torch.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * torch.exp((mel - 15.0) * math.log(6.4) / 27.0))


def mel_frequencies(cfg: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """Centre frequency in Hz of each mel band (n_mels,), float64: the filterbank's triangles have
    their corners at n_mels + 2 points equally spaced on the config's mel scale from f_min to f_max,
    and band i peaks at the (i + 1)-th point."""
    lo, hi = (_hz_to_mel(torch.tensor(f, dtype=torch.float64), cfg.mel_scale) for f in (cfg.f_min, cfg.f_max))
    return _mel_to_hz(torch.linspace(float(lo), float(hi), cfg.n_mels + 2, dtype=torch.float64), cfg.mel_scale)[1:-1]


def frame_times(frames: int, cfg: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """Time in seconds of the centre of each of ``frames`` frames (float64): frames are centred
    (``center=True``), so frame t is centred on sample t * hop_length."""
    return torch.arange(int(frames), dtype=torch.float64) * cfg.hop_length / cfg.sample_rate


@functools.lru_cache(maxsize=16)
def _pinv_and_step(cfg: MelConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    fb = mel_filterbank(cfg).double()                 # (F, M); columns may be empty or duplicated
    pinv = torch.linalg.pinv(fb.T, rtol=1e-6)          # SVD based: rank deficiency is fine
    lip = float(torch.linalg.matrix_norm(fb, ord=2) ** 2)
    return fb.float(), pinv.float(), 1.0 / max(lip, 1e-12)


def mel_to_linear(mel_energy: torch.Tensor, cfg: MelConfig = DEFAULT_MEL, n_iter: int = 30) -> torch.Tensor:
    """Non-negative least squares ``min_{S>=0} ||fb^T S - M||^2`` for the linear spectrogram
    (magnitude ** power) from linear mel energies ``M`` (..., n_mels, frames) -> (..., n_freqs, frames).

    Start: pseudo-inverse (SVD, so empty or duplicate filters cause no NaN) clipped at 0; then
    ``n_iter`` projected-gradient steps with step 1/||fb||^2."""
    fb, pinv, step = _pinv_and_step(cfg)
    M = torch.as_tensor(mel_energy, dtype=torch.float32)
    fb, pinv = fb.to(M.device), pinv.to(M.device)
    S = torch.clamp(torch.matmul(pinv, M), min=0.0)
    for _ in range(n_iter):
        grad = torch.matmul(fb, torch.matmul(fb.T, S) - M)
        S = torch.clamp(S - step * grad, min=0.0)
    return torch.nan_to_num(S, nan=0.0, posinf=0.0)


@functools.lru_cache(maxsize=8)
def _griffin_lim(cfg: MelConfig, n_iter: int) -> torchaudio.transforms.GriffinLim:
    return torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, n_iter=n_iter, win_length=cfg.win_length,
                                            hop_length=cfg.hop_length, power=cfg.power, momentum=0.99,
                                            rand_init=True)


def mel_to_waveform(mel: torch.Tensor, cfg: MelConfig = DEFAULT_MEL, n_iter: int = 64, *,
                    length: int | None = None, nnls_iter: int = 30, seed: int = 0) -> torch.Tensor:
    """Waveform from a normalised mel (n_mels, frames) or (B, n_mels, frames): un-normalise,
    non-negative least-squares inverse mel, Griffin-Lim (``n_iter`` iterations, momentum 0.99,
    seeded random phase start). ``length`` fixes the number of output samples."""
    mel = torch.as_tensor(mel, dtype=torch.float32)
    if mel.dim() not in (2, 3) or mel.shape[-2] != cfg.n_mels:
        raise ValueError(f"expected a mel of shape ([B,] n_mels={cfg.n_mels}, frames), got {tuple(mel.shape)}: "
                         "was it made with another MelConfig?")
    spec = mel_to_linear(denormalise_mel(mel, cfg), cfg, n_iter=nnls_iter)
    gl = _griffin_lim(cfg, int(n_iter)).to(mel.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wav = gl(spec) if length is None else torchaudio.functional.griffinlim(
            spec, gl.window, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.power, int(n_iter), 0.99, length, True)
    return torch.nan_to_num(wav)
