"""The vocoder domain: DiffWave-style mel-conditioned waveform diffusion (Kong et al., ICLR 2021) on
the engine, trained on the audio domain's data, sampled with a few-step schedule.

State per batch (dense): ``wave`` (B, 1, L), the waveform at the frozen ``MelConfig``'s rate.
cond: ``{"mel": (B, n_mels, frames)}``, the audio domain's normalised log-mel of the same clip
(``mel.waveform_to_mel``; frames = ``mel.num_frames(L)``). Generation templates also carry
``"reference"`` (B, L), the clip being re-synthesised, and ``"source"`` (its file names); the
network reads only ``"mel"``.

- Data: the audio domain's loaders and split rules (``data.load_examples``: FSDD or a folder
  of WAV/FLAC, clips cropped/padded to ``data.seconds``). Training examples are random segments of
  ``data.segment_seconds`` (rounded to whole hops) starting on a hop boundary inside the clip's
  audio (before its trailing zero padding; a segment may run into the padding, which teaches
  silence); the mel is computed on the segment. The trainer reseeds
  the global RNGs from (seed, step, example position) before each ``collate``, so the segments are a
  function of those alone.
- Process: DDPM's discrete linear betas, beta_1..beta_T = linspace(1e-4, 0.05, 50) (DiffWave's
  T = 50 schedule): the core's ``ddpm_linear`` process (``core.process.LinearBetaVP``). The network
  is trained on continuous t in [t_min, 1] (the tabulated log-SNR is interpolated between the
  steps), so any time grid works at sampling: the default is a 6-step grid (see ``docs/audio.md``
  for the measured choice).
- Generation (``sciffusion sample CKPT -n N sample.input=FOLDER``): copy-synthesis; seed s takes the
  s-th file (sorted by name) of ``sample.input`` (a folder of WAV/FLAC or one file), cropped or
  padded to ``data.seconds`` like the training clips, and writes ``{seed:08d}.wav``. Without
  ``sample.input`` the seeds index the data's test split.
- Objects: ``{"wave", "sample_rate", "reference" (ndarray or None), "source" (str or None), "mel"}``.

``Vocoder`` / ``load_vocoder`` give other code (the audio domain's ``sample.vocoder``) a loaded
vocoder that turns mels into waveforms with per-example noise keyed by seeds.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core.checkpoint import check_domain, load_checkpoint
from ...core.domain import Batch, Domain, denoiser_from_checkpoint, resolve_config
from ...core.io import InputError
from ...core.noise import ExampleNoise
from ...core.process import LinearBetaVP
from ...core.sampling import Sampled, SampleSpec, sample_batch
from ...core.state import State
from .data import (AUDIO_EXTENSIONS, clips_data_config, crop_or_pad, list_audio_files, load_audio_file,
                   load_examples)
from .mel import MelConfig, MelConfigMismatch, check_mel, clip_wave, mel_config_of, num_frames, waveform_to_mel
from .metrics import log_spectral_distance, mel_cepstral_distortion, spectral_convergence
from .tables import VocoderData, VocoderModel, VocoderSample

__all__ = ["VocoderDomain", "Vocoder", "load_vocoder", "ddpm_linear_process", "trailing_silence_start"]


# ----------------------------------------------------------------------------- the process
def ddpm_linear_process(timesteps: int = 50, beta_start: float = 1e-4, beta_end: float = 0.05) -> LinearBetaVP:
    """DiffWave's discrete linear-beta DDPM schedule (``process.name = "ddpm_linear"``) as a
    continuous-time process: t = n / T has alpha(t)^2 = alpha-bar_n, t = 0 is clean data."""
    return LinearBetaVP(timesteps, beta_start, beta_end)


def trailing_silence_start(wave: torch.Tensor) -> int:
    """Samples before the clip's trailing exact zeros (the loader's end padding): its audio length."""
    nz = torch.nonzero(torch.as_tensor(wave).reshape(-1) != 0)
    return int(nz[-1]) + 1 if nz.numel() else 0


def _list_inputs(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = list_audio_files(p)
        if not files:
            raise InputError(f"{p}: sample.input holds no {'/'.join(AUDIO_EXTENSIONS)} files")
        return files
    if p.is_file():
        return [p]
    raise InputError(f"{p}: sample.input does not exist (give a folder of WAV/FLAC files or one file)")


class VocoderDomain(Domain):
    name = "vocoder"
    description = "DiffWave-style mel-to-waveform diffusion vocoder (copy-synthesis; trained on the audio domain's data)"
    file_suffix = ".wav"

    def __init__(self):
        self._split_cache: dict = {}

    def tables(self) -> dict:
        return {"model": VocoderModel, "data": VocoderData, "sample": VocoderSample}

    def defaults(self) -> dict:
        """DiffWave's recipe in the engine's tables (T = 50 linear betas to 0.05, eps-prediction) and
        a few-step sampler (its own keys are in ``tables``)."""
        return {
            "process": {"name": "ddpm_linear", "timesteps": 50, "beta_end": 0.05},
            "objective": {"prediction": "eps", "weighting": "uniform", "time_sampler": "uniform"},
            "train": {"batch_size": 16, "lr": 2e-4, "steps": 100000, "bf16": False, "grad_clip": 1.0,
                      "ckpt_every": 1000, "log_every": 100, "sample_n": 8},
            "sample": {"sampler": "ddpm", "steps": 6, "grid": "log_snr", "batch_size": 16},
        }

    # ------------------------------------------------------------------ mel configuration
    def mel_config(self, cfg_or_data_config: dict) -> MelConfig:
        return mel_config_of(cfg_or_data_config)

    def check_mel(self, data_config: dict, other: MelConfig | dict, where: str = "") -> MelConfig:
        """Raise ``MelConfigMismatch`` unless ``other`` equals the vocoder's MelConfig."""
        return check_mel(data_config, other, where or "the vocoder's mel settings vs the given ones")

    # ------------------------------------------------------------------ data
    def load_dataset(self, data_cfg: dict, split: str) -> list[dict]:
        """The audio domain's examples (same files, split and clip length), each with ``active``:
        its samples before the trailing zero padding."""
        examples = load_examples(data_cfg, split)
        for e in examples:
            e["active"] = trailing_silence_start(e["wave"])
        return examples

    def data_config(self, train_examples: Sequence[dict], cfg: dict) -> dict:
        dc = clips_data_config(train_examples, cfg)
        dc.pop("label_names", None)
        dc.pop("label_counts", None)
        mel = self.mel_config(dc)
        seconds = float(cfg.get("data", {}).get("segment_seconds", 0.25))
        hops = int(round(seconds * mel.sample_rate / mel.hop_length))
        seg = hops * mel.hop_length
        if hops < 1 or seg > int(dc["samples"]):
            raise InputError(f"vocoder: data.segment_seconds={seconds} gives {seg} samples; need at least one hop "
                             f"({mel.hop_length}) and at most the clip length ({dc['samples']} samples, data.seconds)")
        dc.update(segment_samples=seg, segment_seconds=seg / mel.sample_rate, segment_frames=num_frames(seg, mel))
        return dc

    def segment_start(self, active: int, length: int, segment: int, hop: int) -> int:
        """A random hop-aligned start in the clip's audio (before its trailing zero padding), so
        segments near the end also teach the padding's silence; the segment stays inside the clip.
        Uses the global torch RNG, which the trainer seeds per step and example position."""
        last = max(0, min(max(active - hop, 0), length - segment))
        return hop * int(torch.randint(0, last // hop + 1, ()))

    def collate(self, examples: Sequence[dict], data_config: dict) -> Batch:
        mel_cfg = self.mel_config(data_config)
        S = int(data_config["segment_samples"])
        segs = []
        for e in examples:
            w = clip_wave(e, mel_cfg, "vocoder")
            if w.shape[0] < S:
                w = torch.cat([w, w.new_zeros(S - w.shape[0])])
            active = int(e["active"]) if "active" in e else trailing_silence_start(w)
            a = self.segment_start(active, w.shape[0], S, mel_cfg.hop_length)
            segs.append(w[a:a + S])
        wave = torch.stack(segs)
        return Batch(State.dense(wave=wave.unsqueeze(1)), {"mel": waveform_to_mel(wave, mel_cfg)})

    # ------------------------------------------------------------------ model
    def build_network(self, model_cfg: dict, data_config: dict) -> torch.nn.Module:
        kind = (model_cfg or {}).get("network", "diffwave")
        if kind != "diffwave":
            raise InputError(f"vocoder: unknown model.network '{kind}' (use 'diffwave')")
        from .wavenet import build_diffwave

        mel = self.mel_config(data_config)
        return build_diffwave(model_cfg, mel.n_mels, mel.hop_length)

    # ------------------------------------------------------------------ generation
    def _clips(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> tuple[list, list]:
        """(waves at the model's rate, source names) of the clips the seeds index."""
        mel_cfg = self.mel_config(data_config)
        src = (cfg.get("sample") or {}).get("input") or ""
        if src:
            files = _list_inputs(src)
            waves, names = [], []
            for s in seeds:
                if int(s) >= len(files):
                    raise InputError(f"{src}: seed {s} asks for file {s}, but sample.input holds {len(files)} "
                                     f"audio files (seeds index the sorted files: use -n {len(files)} or fewer)")
                f = files[int(s)]
                waves.append(load_audio_file(f, mel_cfg.sample_rate, downmix=True))
                names.append(str(f))
            return waves, names
        data_cfg = dict(cfg.get("data") or {})
        key = json.dumps(data_cfg, sort_keys=True, default=str)
        if key not in self._split_cache:
            self._split_cache = {key: load_examples(data_cfg, "test")}
        test = self._split_cache[key]
        if not test:
            raise InputError("vocoder: sample.input is empty and the data has no test split to re-synthesise; "
                             "give sample.input=FOLDER of WAV/FLAC files")
        out = []
        for s in seeds:
            if int(s) >= len(test):
                raise InputError(f"vocoder: seed {s} asks for test clip {s}, but the test split has {len(test)} clips "
                                 "(give sample.input=FOLDER, or fewer seeds)")
            out.append(test[int(s)])
        return [e["wave"] for e in out], [e.get("file") for e in out]

    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        mel_cfg = self.mel_config(data_config)
        if cfg.get("data"):
            mel_cfg.check_compatible(self.mel_config(cfg), "the vocoder checkpoint's mel settings vs the run's data.mel")
        seconds = float((cfg.get("data") or {}).get("seconds") or data_config.get("seconds", 1.0))
        L = int(round(seconds * mel_cfg.sample_rate))
        if L < 1:
            raise InputError(f"vocoder: data.seconds={seconds} gives no samples")
        waves, names = self._clips(seeds, cfg, data_config)
        ref = torch.stack([crop_or_pad(torch.as_tensor(w, dtype=torch.float32).reshape(-1), L)[0] for w in waves])
        x0 = State.dense(wave=torch.zeros(len(seeds), 1, L))
        return Batch(x0, {"mel": waveform_to_mel(ref, mel_cfg), "reference": ref, "source": names})

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[dict]:
        mel_cfg = self.mel_config(data_config)
        wave = x0["wave"].detach().float().cpu()
        if wave.dim() != 3 or wave.shape[1] != 1:
            raise ValueError(f"vocoder: expected waves of shape (B, 1, L), got {tuple(wave.shape)}")
        wave = wave[:, 0].clamp(-1.0, 1.0)
        cond = cond if isinstance(cond, dict) else {}
        ref = cond.get("reference")
        names = cond.get("source") or [None] * wave.shape[0]
        mel = cond.get("mel")
        out = []
        for i in range(wave.shape[0]):
            out.append({"wave": wave[i].numpy().astype(np.float32), "sample_rate": mel_cfg.sample_rate,
                        "reference": None if ref is None else ref[i].detach().float().cpu().numpy(),
                        "source": names[i], "mel": None if mel is None else mel[i].detach().float().cpu().numpy()})
        return out

    def write(self, objects: Sequence[dict], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        from .output import write_wav

        return [write_wav(Path(folder) / f"{int(seed):08d}.wav", obj["wave"], obj["sample_rate"],
                          {"seed": int(seed), "source": obj.get("source")}, "sciffusion vocoder")
                for obj, seed in zip(objects, seeds)]

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        """The FSDD vocoder shipped in the package (``sample.vocoder=shipped`` of the audio domain)."""
        path = Path(__file__).parent / "weights" / "fsdd_vocoder"
        return path if (path / "checkpoint.json").is_file() else None

    # ------------------------------------------------------------------ evaluation
    def read(self, path: Path) -> dict:
        """A WAV/FLAC file at its own rate. For files this domain wrote, the source clip named in the
        WAV comment (when it still exists) is loaded as ``reference``, cropped/padded like the template."""
        import soundfile as sf

        path = Path(path)
        try:
            info = sf.info(str(path))
        except Exception as e:
            raise InputError(f"{path}: not a readable audio file ({type(e).__name__}: {e})") from None
        rate = int(info.samplerate)
        wave = load_audio_file(path, rate, downmix=True)
        source, ref = None, None
        try:
            with sf.SoundFile(str(path)) as f:
                meta = json.loads(f.comment) if f.comment else {}
        except (ValueError, RuntimeError, AttributeError, TypeError):
            meta = {}
        if isinstance(meta, dict) and isinstance(meta.get("source"), str):
            source = meta["source"]
            try:
                ref = crop_or_pad(load_audio_file(source, rate, downmix=True), wave.shape[0])[0].numpy()
            except InputError:
                ref = None
        return {"wave": wave.numpy(), "sample_rate": rate, "reference": ref, "source": source, "mel": None,
                "file": str(path)}

    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """``n``, ``duration_s`` (mean), ``rms`` (mean), ``silent`` (share of clips with RMS < 1e-4);
        for the clips that carry their reference waveform (copy-synthesis), the means over them of
        ``spectral_convergence``, ``lsd`` (dB) and ``mcd`` (dB) against it (``n_reference`` clips)."""
        if not objects:
            raise InputError("no audio clips to evaluate")
        mel_cfg = self.mel_config(data_config) if data_config.get("mel") else MelConfig()
        rate = mel_cfg.sample_rate
        waves = [_at_rate(o["wave"], int(o.get("sample_rate", rate)), rate) for o in objects]
        rms = np.array([float(torch.sqrt((w.double() ** 2).mean())) if w.numel() else 0.0 for w in waves])
        out: dict = {"n": len(waves), "duration_s": float(np.mean([w.numel() / rate for w in waves])),
                     "rms": float(rms.mean()), "silent": float((rms < 1e-4).mean())}
        sc, lsd, mcd = [], [], []
        for o, w in zip(objects, waves):
            if o.get("reference") is None:
                continue
            r = _at_rate(o["reference"], int(o.get("sample_rate", rate)), rate)
            sc.append(spectral_convergence(r, w, mel_cfg))
            lsd.append(log_spectral_distance(r, w, mel_cfg))
            mcd.append(mel_cepstral_distortion(r, w, mel_cfg))
        out["n_reference"] = len(sc)
        if sc:
            out.update(spectral_convergence=float(np.mean(sc)), lsd=float(np.mean(lsd)), mcd=float(np.mean(mcd)))
        return out


def _at_rate(wave, rate: int, target: int) -> torch.Tensor:
    w = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    if rate != target:
        import torchaudio

        w = torchaudio.functional.resample(w, rate, target)
    return w


# ----------------------------------------------------------------------------- a loaded vocoder
class Vocoder:
    """A vocoder checkpoint ready to turn normalised mels into waveforms with its own few-step
    sampler (``sample.sampler``, ``sample.steps``, ``sample.grid`` of its config)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        ckpt = load_checkpoint(path)
        check_domain(ckpt, "vocoder")
        self.domain = VocoderDomain()
        self.ckpt = ckpt
        self.config = resolve_config(self.domain, base=ckpt.config, base_name=str(ckpt.path / "checkpoint.json"))
        self.mel_config = self.domain.mel_config(ckpt.data_config)
        self.device = torch.device(device)
        self.denoiser = denoiser_from_checkpoint(self.domain, ckpt, self.config,
                                                 prefer_ema=bool(self.config["sample"]["use_ema"]), device=self.device)
        self.spec = SampleSpec.from_config(self.config["sample"], self.denoiser.process)
        if self.spec.dtype is not None:
            self.denoiser = self.denoiser.to(self.spec.dtype)

    def check_mel(self, other: MelConfig | dict, where: str) -> None:
        self.mel_config.check_compatible(other, where)

    def with_sample(self, **keys) -> "Vocoder":
        """This vocoder with other ``[sample]`` keys (``sampler``, ``grid``, ``steps`` ...), checked
        like a config file's; the network is shared, not copied, so keys that change it (``use_ema``,
        ``dtype``) need a vocoder of their own."""
        shared = sorted({"use_ema", "dtype"} & set(keys))
        if shared:
            raise ValueError(f"vocoder: with_sample keeps the loaded network; sample.{shared[0]} needs its own "
                             "Vocoder (load the checkpoint with that config)")
        other = copy.copy(self)
        other.config = resolve_config(self.domain, {"sample": keys}, base=self.config,
                                      base_name=str(self.ckpt.path / "checkpoint.json"))
        other.spec = SampleSpec.from_config(other.config["sample"], self.denoiser.process)
        return other

    @torch.no_grad()
    def sample(self, mel: torch.Tensor, seeds: Sequence[int], length: int) -> Sampled:
        """The sampled batch (``x0["wave"]`` (B, 1, length), network calls) for normalised mels
        (B, n_mels, frames); example i's noise comes from seeds[i] alone (field stream ``wave``)."""
        mel = torch.as_tensor(mel, dtype=torch.float32).to(self.device)
        if mel.dim() != 3 or mel.shape[1] != self.mel_config.n_mels:
            raise MelConfigMismatch(f"{self.ckpt.path}: mels of shape {tuple(mel.shape)} do not fit the vocoder's "
                                    f"mel settings (expected (B, {self.mel_config.n_mels}, frames))")
        if len(seeds) != mel.shape[0]:
            raise ValueError(f"vocoder: {len(seeds)} seeds for {mel.shape[0]} mels")
        noise = ExampleNoise([int(s) for s in seeds], device=self.device)
        like = State.dense(wave=torch.zeros(mel.shape[0], 1, int(length), device=self.device))
        return sample_batch(self.denoiser, like, {"mel": mel}, noise, self.spec)

    @staticmethod
    def waveforms(sampled: Sampled) -> torch.Tensor:
        """The waveforms (B, length) of a sampled batch, float32 clamped to [-1, 1]."""
        return sampled.x0["wave"][:, 0].float().clamp(-1.0, 1.0)

    def __call__(self, mel: torch.Tensor, seeds: Sequence[int], length: int) -> torch.Tensor:
        """Waveforms (B, length) in [-1, 1] from normalised mels (B, n_mels, frames) (see ``sample``)."""
        return self.waveforms(self.sample(mel, seeds, length))


@functools.lru_cache(maxsize=4)
def _cached_vocoder(folder: str, digest: str, device: str) -> Vocoder:
    return Vocoder(folder, device)


def load_vocoder(path: str | Path, device: str | torch.device = "cpu") -> Vocoder:
    """A ``Vocoder`` from a checkpoint folder, a run folder (its latest checkpoint) or a file inside
    one; loaded once per (checkpoint, device) and cached."""
    ckpt = load_checkpoint(path, verify=False)
    return _cached_vocoder(str(ckpt.path.resolve()), ckpt.hash, str(torch.device(device)))
