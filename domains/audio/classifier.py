"""The evaluation network: a small 1-D CNN that classifies fixed-length clips from their log-mels.

Trained here from real data (no downloaded weights) with ``train_classifier``; its penultimate
features feed FID / NDB and its class probabilities IS, mIS, AM and accuracy (see ``metrics``).
Saved as ``classifier.safetensors`` (weights) + ``classifier.json`` (architecture, MelConfig,
label names, clip length); never pickle.

Architecture (mel bands are the input channels, convolution over time)::

    mel (n_mels, T) -> [Conv1d k5, BatchNorm, ReLU, MaxPool 2] x 2 (width channels)
                    -> Conv1d k3 (feature_dim), BatchNorm, ReLU -> mean over time = features
                    -> Linear -> logits
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sciffusion.core.io import InputError, atomic_path, atomic_write_json

from .data import AudioClips, crop_or_pad
from .mel import DEFAULT_MEL, MelConfig, waveform_to_mel

__all__ = ["MelCNN", "MelClassifier", "train_classifier", "load_classifier"]

FORMAT = "sciffusion-audio-classifier/1"


class MelCNN(nn.Module):
    def __init__(self, n_mels: int, n_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.conv3 = nn.Conv1d(width, feature_dim, 3, padding=1)
        self.bn3 = nn.BatchNorm1d(feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        h = F.max_pool1d(F.relu(self.bn1(self.conv1(mel))), 2)
        h = F.max_pool1d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.relu(self.bn3(self.conv3(h)))
        return h.mean(dim=-1)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(mel)
        return f, self.head(f)


@dataclass
class MelClassifier:
    """A trained ``MelCNN`` with everything needed to use it on audio: the mel configuration,
    clip length (samples; other lengths are centre-cropped / zero-padded at the end) and labels."""

    net: MelCNN
    mel_config: MelConfig
    clip_samples: int
    label_names: list
    arch: dict

    # ------------------------------------------------------------------ inputs
    def _mels(self, waves) -> torch.Tensor:
        if isinstance(waves, AudioClips):
            if waves.sample_rate != self.mel_config.sample_rate:
                raise InputError(f"clips at {waves.sample_rate} Hz, classifier expects "
                                 f"{self.mel_config.sample_rate} Hz")
            waves = waves.waves
        if isinstance(waves, torch.Tensor) and waves.dim() == 2 and waves.shape[1] == self.clip_samples:
            x = waves.float()
        else:
            x = torch.stack([crop_or_pad(torch.as_tensor(w).float().reshape(-1), self.clip_samples)[0]
                             for w in waves])
        return waveform_to_mel(x, self.mel_config)

    def check_mel(self, mel_config: MelConfig | dict, where: str = "mels given to the classifier") -> None:
        self.mel_config.check_compatible(mel_config, where)

    @torch.no_grad()
    def _run(self, mel: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        feats, logits = [], []
        for i in range(0, mel.shape[0], batch_size):
            f, lo = self.net(mel[i:i + batch_size])
            feats.append(f)
            logits.append(lo)
        return torch.cat(feats).double(), torch.cat(logits).double()

    # ------------------------------------------------------------------ outputs
    def features_and_logits(self, waves, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, feature_dim) features and (N, n_classes) logits (float64) of waveforms at
        ``mel_config.sample_rate``: a (N, L) tensor, a list of 1-D tensors, or ``AudioClips``."""
        return self._run(self._mels(waves), batch_size)

    def features_and_logits_from_mel(self, mel: torch.Tensor, mel_config: MelConfig | dict,
                                     batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Same from normalised mels (N, n_mels, frames); ``mel_config`` must equal the classifier's."""
        self.check_mel(mel_config)
        return self._run(torch.as_tensor(mel).float(), batch_size)

    def features(self, waves, batch_size: int = 256) -> torch.Tensor:
        return self.features_and_logits(waves, batch_size)[0]

    def logits(self, waves, batch_size: int = 256) -> torch.Tensor:
        return self.features_and_logits(waves, batch_size)[1]

    def probs(self, waves, batch_size: int = 256) -> torch.Tensor:
        return torch.softmax(self.logits(waves, batch_size), dim=-1)

    def predict(self, waves, batch_size: int = 256) -> torch.Tensor:
        return self.logits(waves, batch_size).argmax(dim=-1)

    def accuracy(self, waves, labels) -> float:
        return float((self.predict(waves) == torch.as_tensor(labels)).double().mean())

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write ``classifier.safetensors`` and ``classifier.json`` into ``folder`` (atomically each)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        with atomic_path(folder / "classifier.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        atomic_write_json(folder / "classifier.json", {
            "format": FORMAT, "arch": self.arch, "mel_config": self.mel_config.to_dict(),
            "clip_samples": self.clip_samples, "label_names": list(self.label_names),
            "credit": "trained on the Free Spoken Digit Dataset (FSDD), CC BY-SA 4.0, when trained by load_fsdd"})
        return folder


def load_classifier(folder: str | Path, expect_mel: MelConfig | None = None) -> MelClassifier:
    """Load a classifier saved by ``MelClassifier.save``; with ``expect_mel`` its mel config must match."""
    folder = Path(folder)
    meta_path, weights_path = folder / "classifier.json", folder / "classifier.safetensors"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: cannot read classifier metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_path}: not a sciffusion audio classifier (format {meta.get('format')!r})")
    cfg = MelConfig.from_dict(meta["mel_config"])
    if expect_mel is not None:
        expect_mel.check_compatible(cfg, f"classifier {folder}")
    net = MelCNN(**meta["arch"])
    try:
        state = load_file(str(weights_path))
    except Exception as e:
        raise InputError(f"{weights_path}: cannot read classifier weights ({e})") from None
    net.load_state_dict(state)
    net.eval()
    return MelClassifier(net, cfg, int(meta["clip_samples"]), list(meta["label_names"]), dict(meta["arch"]))


def train_classifier(train_clips, labels=None, cfg: MelConfig = DEFAULT_MEL, steps: int = 800, seed: int = 0, *,
                     batch_size: int = 64, lr: float = 1e-2, width: int = 32, feature_dim: int = 64,
                     label_names: list | None = None, clip_samples: int | None = None,
                     max_shift_frames: int = 8, gain_db: float = 6.0) -> MelClassifier:
    """Train the evaluation classifier on real clips.

    ``train_clips``: ``AudioClips`` (labels and names taken from it) or a (N, L) tensor with
    ``labels`` (N,) int. Mels are computed once; each step draws a batch with augmentation (random
    circular shift of up to ``max_shift_frames`` frames, random gain of +-``gain_db`` dB).
    Adam with cosine-decayed learning rate, plain cross-entropy (no label smoothing: IS needs confident probabilities). Deterministic
    for a given ``seed`` on one thread."""
    if isinstance(train_clips, AudioClips):
        if labels is None:
            labels = train_clips.labels
        label_names = label_names or train_clips.label_names
        train_clips = train_clips.waves
    if labels is None:
        raise ValueError("train_classifier needs labels")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n_classes = len(label_names) if label_names else int(labels.max()) + 1
    label_names = list(label_names) if label_names else [str(i) for i in range(n_classes)]
    if isinstance(train_clips, torch.Tensor) and train_clips.dim() == 2 and clip_samples in (None, train_clips.shape[1]):
        clip_samples = int(train_clips.shape[1])
        x = train_clips.float()
    else:
        clip_samples = clip_samples or cfg.sample_rate
        x = torch.stack([crop_or_pad(torch.as_tensor(w).float().reshape(-1), clip_samples)[0] for w in train_clips])
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} clips but {labels.shape[0]} labels")
    mel = waveform_to_mel(x, cfg)
    arch = {"n_mels": cfg.n_mels, "n_classes": n_classes, "width": width, "feature_dim": feature_dim}
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MelCNN(**arch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gain = 2.0 * gain_db / (cfg.db_max - cfg.db_min)  # dB -> normalised units
    net.train()
    n = mel.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb = mel[idx]
        if max_shift_frames > 0:
            shifts = torch.randint(-max_shift_frames, max_shift_frames + 1, (len(idx),), generator=gen)
            xb = torch.stack([torch.roll(m, int(s), dims=-1) for m, s in zip(xb, shifts)])
        if gain_db > 0:
            g = (torch.rand(len(idx), 1, 1, generator=gen) * 2 - 1) * gain
            xb = torch.clamp(xb + g, -1.0, 1.0)
        _, logits = net(xb)
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return MelClassifier(net, cfg, clip_samples, label_names, arch)
