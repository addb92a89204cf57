"""The images evaluation network: a small CNN trained here on the same data (no downloaded weights).

Its penultimate features (global average pool of the last block) feed FID and precision / recall;
its class probabilities feed IS and accuracy (see ``metrics``). Images are float tensors
(N, C, H, W) in [-1, 1].

Two kinds, chosen by ``train_classifier``:

- ``"labels"``: trained on the given labels, with light augmentation (a random shift of up to
  ``max_shift`` = 1 pixel in each direction, edges replicated, and Gaussian noise of std
  ``noise_std``, clipped to [-1, 1]). ``probs`` are class probabilities: IS and accuracy defined.
- ``"rotation"``: for unlabelled data (telescope patches, ...), a self-supervised pretext task:
  predict which of 4 transforms was applied to an (augmented) image. Square images: rotations by
  0 / 90 / 180 / 270 degrees. Non-square images (a 90-degree rotation would change the shape):
  identity / rotation by 180 / horizontal flip / vertical flip (the 4-element group these form).
  ``probs`` are probabilities over those transforms, not over classes of the data, so IS and
  accuracy are not defined for this kind and ``metrics.evaluate_images`` does not report them.

Architecture (``widths`` = (w1, ..., wn))::

    x (C, H, W) -> [Conv3x3 (stride 1), GroupNorm, SiLU] (w1)
                -> [Conv3x3 stride 2, GroupNorm, SiLU] (w2) ... (wn)   # downsample by 2 each
                -> global average pool = features (wn) -> Linear -> logits

Saved as ``classifier.safetensors`` (weights) + ``classifier.json`` (format, architecture, kind,
image shape, label names); never pickle. Training is deterministic for a given seed (weights
initialised and batches drawn from generators seeded by ``seed``; same thread count; CPU).
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

from ...core.io import InputError, atomic_path, atomic_write_json
from ...core.layers import group_count

__all__ = ["ImageCNN", "ImageClassifier", "train_classifier", "load_classifier", "KINDS",
           "ROTATION_NAMES_SQUARE", "ROTATION_NAMES_RECT"]

FORMAT = "sciffusion-images-classifier/1"
KINDS = ("labels", "rotation")
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
ROTATION_NAMES_SQUARE = ["rot0", "rot90", "rot180", "rot270"]
ROTATION_NAMES_RECT = ["identity", "rot180", "hflip", "vflip"]


class ImageCNN(nn.Module):
    """conv-GroupNorm-SiLU blocks (the first at full resolution, each further one downsamples by 2),
    global average pooling (``features``) and a linear head (logits)."""

    def __init__(self, in_channels: int, n_classes: int, widths: tuple | list = (32, 64, 128)):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError(f"bad ImageCNN arch: in_channels={in_channels}, n_classes={n_classes}, widths={widths}")
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(group_count(w), w), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)
        self.feature_dim = c

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, widths[-1]) penultimate features."""
        return self.body(x).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)


def _transform(x: torch.Tensor, t: torch.Tensor, square: bool) -> torch.Tensor:
    """Apply transform ``t[i]`` (0..3) of the rotation pretext task to image ``x[i]`` (see module doc)."""
    out = x.clone()
    for k in range(1, 4):
        m = t == k
        if not bool(m.any()):
            continue
        xb = x[m]
        if square:
            xb = torch.rot90(xb, k, dims=(-2, -1))
        elif k == 1:
            xb = torch.flip(xb, dims=(-2, -1))
        elif k == 2:
            xb = torch.flip(xb, dims=(-1,))
        else:
            xb = torch.flip(xb, dims=(-2,))
        out[m] = xb
    return out


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [-max_shift, max_shift]^2, edges replicated."""
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None]                              # (n, h)
    cols = dx[:, None] + torch.arange(w)[None]                              # (n, w)
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _check_images(x, shape: tuple | None = None, what: str = "images") -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 4:
        raise ValueError(f"{what}: need a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{what}: images of shape {tuple(x.shape[1:])}, the classifier expects {tuple(shape)}")
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: non-finite values")
    return x


@dataclass
class ImageClassifier:
    """A trained ``ImageCNN`` with its kind (``"labels"`` | ``"rotation"``), the image shape
    (C, H, W) it takes and the names of its outputs (classes, or transforms for ``"rotation"``)."""

    net: ImageCNN
    kind: str
    image_shape: tuple
    label_names: list
    arch: dict

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    @torch.no_grad()
    def features_and_logits(self, x, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, F) features and (N, K) logits, float64, of images (N, C, H, W) in [-1, 1]; batched, no grad, CPU."""
        x = _check_images(x, self.image_shape)
        self.net.eval()
        feats, logits = [], []
        for i in range(0, x.shape[0], batch_size):
            f, lo = self.net(x[i:i + batch_size])
            feats.append(f)
            logits.append(lo)
        if not feats:
            return (torch.zeros(0, self.feature_dim, dtype=torch.float64),
                    torch.zeros(0, len(self.label_names), dtype=torch.float64))
        return torch.cat(feats).double(), torch.cat(logits).double()

    def features(self, x, batch_size: int = 256) -> torch.Tensor:
        """(N, F) penultimate features (float64)."""
        return self.features_and_logits(x, batch_size)[0]

    def logits(self, x, batch_size: int = 256) -> torch.Tensor:
        return self.features_and_logits(x, batch_size)[1]

    def probs(self, x, batch_size: int = 256) -> torch.Tensor:
        """(N, K) softmax probabilities over ``label_names`` (float64)."""
        return torch.softmax(self.logits(x, batch_size), dim=-1)

    def predict(self, x, batch_size: int = 256) -> torch.Tensor:
        return self.logits(x, batch_size).argmax(dim=-1)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write ``classifier.safetensors`` and ``classifier.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu().clone() for k, v in self.net.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        atomic_write_json(folder / META_FILE, {
            "format": FORMAT, "arch": self.arch, "kind": self.kind, "image_shape": list(self.image_shape),
            "label_names": [str(n) for n in self.label_names]})
        return folder


def load_classifier(folder: str | Path) -> ImageClassifier:
    """Load a classifier saved by ``ImageClassifier.save``. Missing, corrupt or inconsistent files
    (unreadable JSON or safetensors, unknown format, tensors missing or of the wrong shape) raise
    ``InputError`` naming the file."""
    folder = Path(folder)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: cannot read classifier metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{meta_path}: not a sciffusion images classifier (format {fmt!r})")
    try:
        arch = dict(meta["arch"])
        kind = meta["kind"]
        shape = tuple(int(s) for s in meta["image_shape"])
        names = [str(n) for n in meta["label_names"]]
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {KINDS}")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape {list(shape)} is not (C, H, W)")
        if int(arch["in_channels"]) != shape[0] or int(arch["n_classes"]) != len(names):
            raise ValueError("arch does not match image_shape / label_names")
        net = ImageCNN(int(arch["in_channels"]), int(arch["n_classes"]), list(arch["widths"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{meta_path}: bad classifier metadata ({type(e).__name__}: {e})") from None
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # missing, truncated, not safetensors
        raise InputError(f"{weights_path}: cannot read classifier weights ({e})") from None
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{weights_path}: tensors do not match the architecture in {meta_path.name} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(f"{weights_path}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                             f"the architecture in {meta_path.name} needs {tuple(v.shape)}")
        if not state[k].is_floating_point() or not bool(torch.isfinite(state[k]).all()):
            raise InputError(f"{weights_path}: tensor {k!r} is not finite floating point")
    net.load_state_dict(state)
    net.eval()
    return ImageClassifier(net, kind, shape, names, {"in_channels": shape[0], "n_classes": len(names),
                                                    "widths": [int(w) for w in arch["widths"]]})


def train_classifier(images, labels=None, *, steps: int = 1000, batch_size: int = 64, seed: int = 0,
                     label_names: list | None = None, lr: float = 3e-3, widths: tuple | list = (32, 64, 128),
                     max_shift: int = 1, noise_std: float = 0.03) -> ImageClassifier:
    """Train the evaluation classifier on real images (N, C, H, W) in [-1, 1].

    With ``labels`` (N,) ints in [0, K): learn them (kind ``"labels"``; ``label_names`` default to
    "0".."K-1"). Without: the rotation pretext task (kind ``"rotation"``, see the module doc;
    ``label_names`` must then be None). Each step draws ``batch_size`` images with augmentation
    (random shift of up to ``max_shift`` pixels, noise of std ``noise_std``, clipped); AdamW with a
    cosine-decayed learning rate, cross-entropy. Same seed, same weights."""
    x = _check_images(images, what="train_classifier images")
    n, c, h, w = x.shape
    if n < 2:
        raise ValueError(f"train_classifier needs >= 2 images, got {n}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    square = h == w
    if labels is None:
        if label_names is not None:
            raise ValueError("label_names given without labels (the rotation task has fixed output names)")
        kind = "rotation"
        names = list(ROTATION_NAMES_SQUARE if square else ROTATION_NAMES_RECT)
        y = None
    else:
        kind = "labels"
        y = torch.as_tensor(labels)
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"{n} images but labels of shape {tuple(y.shape)}")
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise ValueError("labels must be integers")
        y = y.to(torch.int64)
        if int(y.min()) < 0:
            raise ValueError("labels must be >= 0")
        k = len(label_names) if label_names is not None else int(y.max()) + 1
        if int(y.max()) >= k:
            raise ValueError(f"label {int(y.max())} but only {k} label names")
        names = [str(s) for s in label_names] if label_names is not None else [str(i) for i in range(k)]
    arch = {"in_channels": c, "n_classes": len(names), "widths": [int(v) for v in widths]}
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ImageCNN(**arch)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb = x[idx]
        if max_shift > 0:
            xb = _shift(xb, max_shift, gen)
        if noise_std > 0:
            xb = (xb + noise_std * torch.randn(xb.shape, generator=gen)).clamp(-1.0, 1.0)
        if y is None:
            target = torch.randint(0, 4, (len(idx),), generator=gen)
            xb = _transform(xb, target, square)
        else:
            target = y[idx]
        _, logits = net(xb)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return ImageClassifier(net, kind, (c, h, w), names, arch)
