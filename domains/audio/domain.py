"""The audio domain: class-conditional diffusion of fixed-length log-mel spectrograms, vocoded with
Griffin-Lim, on FSDD (the default data) or a user's folder of WAV/FLAC.

State per batch (dense): ``mel`` (B, 1, n_mels, frames), normalised log-mel in [-1, 1] of the
frozen ``MelConfig`` (saved in the data config, checked whenever the model meets audio or mels).
cond: ``{"label": (B,) int64}`` indices into the data config's ``label_names``; index
``len(label_names)`` is the null label (classifier-free guidance); None for an unlabelled model.

Objects (``decode`` / ``read``): dicts ``{"wave": float32 ndarray, "sample_rate": int, "label": int
(-1 unknown), "label_name": str | None, "mel": ndarray | None}`` (``read`` adds "file" and "seed").

Pictures (``output``): ``{seed}.png`` beside each WAV (``write``), ``grid.png`` of a run
(``run_picture``), ``per_class_accuracy.png`` of an evaluation (``evaluation_pictures``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core.domain import Batch, Domain
from ...core.features import asked_labels
from ...core.io import InputError, cache_dir
from ...core.seeds import labels_for_seeds
from ...core.state import State
from .data import (FSDD_PATTERN, clips_data_config, fsdd_root, label_of, load_audio_file, load_examples,
                   load_fsdd)
from .mel import MelConfig, MelConfigMismatch, check_mel, clip_wave, mel_config_of, mel_to_waveform, waveform_to_mel
from .tables import AudioData, AudioModel, AudioSample
from .vocoder import VocoderDomain, load_vocoder

CLASSIFIER_STEPS = 800
WEIGHTS_DIR = Path(__file__).parent / "weights"
GRID_CLIPS = 16  # panels of grid.png (the run's first clips by seed)
ACCURACY_PICTURE = "per_class_accuracy.png"


def _label_key(value) -> str | None:
    return None if value is None else str(value)


def _seed_and_label(path: Path) -> tuple[int | None, str | None]:
    """(seed, label) of an audio file from the JSON sciffusion writes into a WAV's comment
    (``output.write_wav``); else no seed, and the label of an FSDD-style file name, if any."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            meta = json.loads(f.comment) if f.comment else {}
    except (ValueError, RuntimeError, AttributeError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    label = meta.get("label")
    if label is None:
        label = label_of(Path(path).name, FSDD_PATTERN)
    seed = meta.get("seed")
    return (seed if isinstance(seed, int) and not isinstance(seed, bool) else None), _label_key(label)


def _caption(seed, label, path: Path) -> str:
    """"00000003: label 7": the seed (else the file's stem) and, when known, the label."""
    name = f"{int(seed):08d}" if isinstance(seed, int) else Path(path).stem
    return name if label is None else f"{name}: label {label}"


def _clips_key(waves: Sequence[torch.Tensor], classifier) -> str:
    """A digest of clips' samples and of the classifier settings that judge them."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"mel": classifier.mel_config.to_dict(), "clip": classifier.clip_samples},
                        sort_keys=True).encode())
    for w in waves:
        h.update(str(w.numel()).encode())
        h.update(w.float().numpy().tobytes())
    return h.hexdigest()


class AudioDomain(Domain):
    name = "audio"
    description = "Audio clips as log-mel spectrograms (class-conditional 2-D U-Net, Griffin-Lim; FSDD or WAV/FLAC folders)"
    file_suffix = ".wav"

    def __init__(self):
        self._decode_opts: dict = {}
        self._fsdd_test = None  # FSDD's test split, loaded for the first picture that shows a real clip
        self._verdicts = None   # (clips key, labels the classifier heard) of the last clips it judged

    def tables(self) -> dict:
        return {"model": AudioModel, "data": AudioData, "sample": AudioSample}

    def defaults(self) -> dict:
        """The mel model's recipe in the engine's tables (its own keys are in ``tables``)."""
        return {
            "process": {"name": "vp_cosine"},
            "objective": {"prediction": "v", "condition_dropout": 0.1},
            "train": {"batch_size": 32, "lr": 2e-4, "steps": 20000, "bf16": False, "ckpt_every": 1000,
                      "log_every": 100, "grad_clip": 1.0},
            "sample": {"sampler": "dpmpp_2m", "batch_size": 64},
        }

    # ------------------------------------------------------------------ mel configuration
    @staticmethod
    def mel_config(cfg_or_data_config: dict) -> MelConfig:
        """The MelConfig of a data config (``{"mel": {...}}``) or of a run config (``data.sample_rate``
        and the ``data.mel`` overrides)."""
        return mel_config_of(cfg_or_data_config)

    def check_mel(self, data_config: dict, other: MelConfig | dict, where: str = "") -> MelConfig:
        """Raise ``MelConfigMismatch`` unless ``other`` equals the model's (data config's) MelConfig."""
        return check_mel(data_config, other, where or "the model's mel settings vs the given ones")

    def mels(self, waves: torch.Tensor, data_config: dict, mel_config: MelConfig | dict | None = None) -> torch.Tensor:
        """Normalised mels (B, n_mels, frames) of waveforms (B, L) at the model's rate; a given
        ``mel_config`` (what the caller believes the settings are) must equal the model's."""
        cfg = self.mel_config(data_config)
        if mel_config is not None:
            cfg.check_compatible(mel_config, "the model's mel settings vs the given ones")
        return waveform_to_mel(torch.as_tensor(waves, dtype=torch.float32), cfg)

    # ------------------------------------------------------------------ data
    def load_dataset(self, data_cfg: dict, split: str) -> list[dict]:
        """The clips of a split (``data.load_examples``, shared with the vocoder domain)."""
        return load_examples(data_cfg, split)

    def data_config(self, train_examples: Sequence[dict], cfg: dict) -> dict:
        """Mel settings, clip length and label names/counts of the training clips (``data.clips_data_config``)."""
        return clips_data_config(train_examples, cfg)

    def collate(self, examples: Sequence[dict], data_config: dict) -> Batch:
        mel_cfg = self.mel_config(data_config)
        L = int(data_config["samples"])
        waves = []
        for e in examples:
            w = clip_wave(e, mel_cfg, "audio")
            if w.shape[0] != L:
                raise InputError(f"audio: clip {e.get('file', '')} has {w.shape[0]} samples, the model uses {L}")
            waves.append(w)
        mel = waveform_to_mel(torch.stack(waves), mel_cfg).unsqueeze(1)
        x0 = State.dense(mel=mel)
        names = data_config.get("label_names") or []
        if not names:
            return Batch(x0, None)
        index = {n: i for i, n in enumerate(names)}
        try:
            lab = torch.tensor([index[_label_key(e["label"])] for e in examples], dtype=torch.long)
        except KeyError as err:
            raise InputError(f"audio: label {err.args[0]!r} is not one of the model's labels {names}") from None
        return Batch(x0, {"label": lab})

    # ------------------------------------------------------------------ model
    def build_network(self, model_cfg: dict, data_config: dict) -> torch.nn.Module:
        kind = (model_cfg or {}).get("network", "unet1d")
        classes = len(data_config.get("label_names") or [])
        if kind == "unet1d":
            from .unet import build_unet1d

            return build_unet1d(model_cfg, classes, int(data_config["n_mels"]))
        if kind == "unet":
            from .unet import build_unet

            return build_unet(model_cfg, classes)
        raise InputError(f"audio: unknown model.network '{kind}' (use 'unet1d', mel bands as channels, or 'unet', 2-D)")

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        names = data_config.get("label_names") or []
        return {"label": len(names)} if names else None

    # ------------------------------------------------------------------ generation
    def sample_labels(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> list[int]:
        """Label index per seed: ``sample.label`` (an index or a label name) for all, or with -1 each
        seed's own draw from the training label counts (``core.seeds.labels_for_seeds``)."""
        return labels_for_seeds((cfg.get("sample") or {}).get("label", -1), data_config.get("label_names") or [],
                                data_config.get("label_counts"), seeds, "audio")

    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        if cfg.get("data"):
            self.check_mel(data_config, self.mel_config(cfg), "the checkpoint's mel settings vs the run's data.mel")
        s = cfg.get("sample") or {}
        vocoder = str(s.get("vocoder") or "griffin_lim")
        if vocoder == "shipped":
            shipped = VocoderDomain().default_checkpoint()
            if shipped is None:
                raise InputError("audio: sample.vocoder=shipped, but this installation has no shipped vocoder "
                                 "(use griffin_lim or a vocoder checkpoint folder)")
            vocoder = str(shipped)
        # decode() takes its batch's seeds from this queue in template order (batch generation decodes
        # one batch behind while the next template is made, so a single slot would be overwritten)
        pending = self._decode_opts.get("seeds")
        pending = pending if pending is not None else collections.deque(maxlen=8)
        if vocoder != "griffin_lim":
            load_vocoder(vocoder).check_mel(self.mel_config(data_config), f"vocoder {vocoder} vs the mel model")
            pending.append([int(v) for v in seeds])
        self._decode_opts = {"griffin_lim_iters": int(s.get("griffin_lim_iters", 32)),
                             "spectrograms": bool(s.get("spectrograms", True)), "vocoder": vocoder, "seeds": pending}
        spec = self._inpaint_spec(cfg, data_config)
        self._decode_opts["inpaint"] = spec
        n = len(seeds)
        x0 = State.dense(mel=torch.zeros(n, 1, int(data_config["n_mels"]), int(data_config["frames"])))
        names = data_config.get("label_names") or []
        if not names:
            return Batch(x0, None)
        if spec is not None and str(s.get("label", -1)) in ("-1", "", "None"):
            # inpainting: the clip's own label when its name gives one, else no label (unconditional)
            idx = names.index(spec.label_name) if spec.label_name in names else len(names)
            return Batch(x0, {"label": torch.full((n,), idx, dtype=torch.long)})
        return Batch(x0, {"label": torch.tensor(self.sample_labels(seeds, cfg, data_config), dtype=torch.long)})

    def _inpaint_spec(self, cfg: dict, data_config: dict):
        from .inpaint import load_inpaint_spec

        pattern = (cfg.get("data") or {}).get("label_pattern", FSDD_PATTERN)
        return load_inpaint_spec(cfg.get("sample") or {}, self.mel_config(data_config), int(data_config["samples"]),
                                 pattern)

    def constraint(self, batch: Batch, seeds: Sequence[int], cfg: dict, data_config: dict):
        """Inpainting (``sample.inpaint`` + ``sample.inpaint_span``): the clip's mel frames outside the span."""
        spec = self._decode_opts.get("inpaint")
        if spec is None:
            return None
        from .inpaint import known_mask

        mel, mask = known_mask(spec, self.mel_config(data_config), len(seeds))
        return State.dense(mel=mel), {"mel": mask}

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[dict]:
        mel_cfg = self.mel_config(data_config)
        mel = x0["mel"].detach().float().cpu()
        if mel.dim() != 4 or mel.shape[1] != 1 or mel.shape[2] != mel_cfg.n_mels:
            raise MelConfigMismatch(f"audio: mels of shape {tuple(mel.shape)} do not fit the model's mel settings "
                                    f"(expected (B, 1, {mel_cfg.n_mels}, frames))")
        mel = mel[:, 0].clamp(-1.0, 1.0)
        L = int(data_config["samples"])
        vocoder = self._decode_opts.get("vocoder", "griffin_lim")
        if vocoder == "griffin_lim":
            iters = int(self._decode_opts.get("griffin_lim_iters", 32))
            wave = mel_to_waveform(mel, mel_cfg, n_iter=iters, length=L)
        else:  # a vocoder checkpoint; its noise keyed by the batch's seeds (template's), else by position
            voc = load_vocoder(vocoder, x0["mel"].device)
            voc.check_mel(mel_cfg, f"vocoder {vocoder} vs the mel model")
            pending, seeds = self._decode_opts.get("seeds") or collections.deque(), list(range(mel.shape[0]))
            while pending:
                got = pending.popleft()
                if len(got) == mel.shape[0]:
                    seeds = got
                    break
            wave = voc(mel.to(x0["mel"].device), seeds, L).float().cpu()
        names = data_config.get("label_names") or []
        labels = cond.get("label") if isinstance(cond, dict) else None
        out = []
        for i in range(mel.shape[0]):
            w = wave[i].numpy().astype(np.float32)
            peak = float(np.abs(w).max()) if w.size else 0.0
            if peak > 1.0:
                w = w / peak
            if self._decode_opts.get("inpaint") is not None:
                from .inpaint import splice

                w = splice(torch.from_numpy(w), self._decode_opts["inpaint"]).numpy().astype(np.float32)
            lab = int(labels[i]) if labels is not None and 0 <= int(labels[i]) < len(names) else -1
            out.append({"wave": w, "sample_rate": mel_cfg.sample_rate, "label": lab,
                        "label_name": names[lab] if lab >= 0 else None, "mel": mel[i].numpy()})
        return out

    def write(self, objects: Sequence[dict], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        from .output import write_wav

        paths = []
        for obj, seed in zip(objects, seeds):
            path = write_wav(Path(folder) / f"{int(seed):08d}.wav", obj["wave"], obj["sample_rate"],
                             {"seed": int(seed), "label": obj.get("label_name")}, "sciffusion audio")
            if self._decode_opts.get("spectrograms") and obj.get("mel") is not None:
                paths.append((path, self._picture(obj, int(seed), path.with_suffix(".png"), data_config)))
            else:
                paths.append(path)
        return paths

    def _picture(self, obj: dict, seed: int, path: Path, data_config: dict) -> Path:
        """``{seed}.png``: the generated mel beside the clip it is compared with: the original of an
        inpainting, else (FSDD models) a real test-split clip of the same digit, picked by the seed."""
        from .output import spectrogram_png

        mel_cfg = self.mel_config(data_config)
        name = obj.get("label_name")
        mels, titles = [obj["mel"]], [f"generated, seed {seed}" + (f", label {name}" if name is not None else "")]
        spec = self._decode_opts.get("inpaint")
        if spec is not None:
            mels.append(waveform_to_mel(spec.wave, mel_cfg).numpy())
            titles.append(f"original {Path(spec.file).name}, span {spec.start / mel_cfg.sample_rate:.2f}-"
                          f"{spec.end / mel_cfg.sample_rate:.2f} s regenerated")
        else:
            real = self._real_clip(name, seed, data_config)
            if real is not None:
                mels.append(waveform_to_mel(real[0], mel_cfg).numpy())
                titles.append(f"real (FSDD test): {real[1]}")
        return spectrogram_png(path, mels, titles, mel_config=mel_cfg, columns=2)

    def _real_clip(self, label: str | None, seed: int, data_config: dict):
        """(wave, file name) of an FSDD test clip with this label, or None (not an FSDD model / absent)."""
        if label is None or data_config.get("source") != "fsdd" or fsdd_root() is None:
            return None
        if self._fsdd_test is None:
            self._fsdd_test = load_fsdd("test", length=int(data_config["samples"]))
        test = self._fsdd_test
        names = test.label_names
        idx = [i for i in range(len(test)) if names[int(test.labels[i])] == label]
        if not idx:
            return None
        i = idx[seed % len(idx)]
        return test.waves[i], Path(test.files[i]).name

    def run_picture(self, files: Sequence[Path], path: Path, cfg: dict, data_config: dict) -> Path | None:
        """grid.png: the log-mel spectrograms of the run's first ``GRID_CLIPS`` WAVs (as written, i.e.
        after the vocoder), each titled with its seed and label (``sample.grid_picture``)."""
        from .output import spectrogram_png

        if not (cfg.get("sample") or {}).get("grid_picture", True) or not files:
            return None
        mel_cfg = self.mel_config(data_config)
        clips = [self.read(f) for f in files[:GRID_CLIPS]]
        waves = self._at_rate(clips, mel_cfg.sample_rate)
        mels = [waveform_to_mel(w, mel_cfg).numpy() for w in waves]
        titles = [_caption(c.get("seed"), c.get("label_name"), c["file"]) for c in clips]
        return spectrogram_png(path, mels, titles, mel_config=mel_cfg,
                               title=f"the first {len(mels)} clips by seed (log-mel of the WAVs)")

    def report_item(self, path: Path, data_config: dict) -> dict | None:
        """A sample WAV as the report shows it: a player, its ``{seed}.png`` when there is one, and
        the caption "00000003: label 7"."""
        path = Path(path)
        picture = path.with_suffix(".png")
        return {"kind": "audio", "path": path, "picture": picture if picture.is_file() else None,
                "caption": _caption(*_seed_and_label(path), path)}

    # ------------------------------------------------------------------ evaluation
    def read(self, path: Path) -> dict:
        """A WAV/FLAC file at its own rate (``metrics`` resamples to the model's): the label comes
        from sciffusion's WAV comment, else from an FSDD-style file name, else unknown; the seed
        from the comment (None for other files)."""
        import soundfile as sf

        path = Path(path)
        try:
            info = sf.info(str(path))
        except Exception as e:
            raise InputError(f"{path}: not a readable audio file ({type(e).__name__}: {e})") from None
        wave = load_audio_file(path, int(info.samplerate), downmix=True)
        seed, label = _seed_and_label(path)
        return {"wave": wave.numpy(), "sample_rate": int(info.samplerate), "label": -1,
                "label_name": label, "mel": None, "file": str(path), "seed": seed}

    def _at_rate(self, objects: Sequence[dict], rate: int) -> list[torch.Tensor]:
        import torchaudio

        out = []
        for o in objects:
            w = torch.as_tensor(np.asarray(o["wave"], dtype=np.float32)).reshape(-1)
            if int(o.get("sample_rate", rate)) != rate:
                w = torchaudio.functional.resample(w, int(o["sample_rate"]), rate)
            out.append(w)
        return out

    @staticmethod
    def _evaluation_mel(data_config: dict) -> MelConfig:
        """The mel settings clips are evaluated with: the model's, else (no checkpoint) the defaults."""
        return mel_config_of(data_config) if data_config.get("mel") else MelConfig()

    def evaluation_classifier(self, data_config: dict):
        """The digit classifier that scores clips for this data config ({}: standalone evaluation):
        None for a model not trained on FSDD, or when FSDD is absent (``classifier``)."""
        if data_config and data_config.get("source") != "fsdd":
            return None
        mel_cfg = self._evaluation_mel(data_config)
        return self.classifier(mel_cfg, int(data_config.get("samples", mel_cfg.sample_rate)))

    def _heard(self, clf, waves: Sequence[torch.Tensor], logits: torch.Tensor | None = None) -> torch.Tensor:
        """The label index the classifier hears in each clip: the arg-max of ``logits`` when the caller
        ran it (remembered), else what it heard in the same clips last time (``metrics``), else run now."""
        key = _clips_key(waves, clf)
        if logits is not None:
            self._verdicts = (key, logits.argmax(dim=1))
        elif self._verdicts is None or self._verdicts[0] != key:
            self._verdicts = (key, clf.predict(waves))
        return self._verdicts[1]

    def classifier(self, mel_cfg: MelConfig, clip_samples: int):
        """The FSDD evaluation classifier for these mel settings (trained once, about half a minute on
        one thread, then cached); None when FSDD is absent or the rate is not FSDD's 8 kHz."""
        from .classifier import load_classifier, train_classifier
        if fsdd_root() is None or mel_cfg.sample_rate != 8000:
            return None
        key = json.dumps({"mel": mel_cfg.to_dict(), "clip": clip_samples, "steps": CLASSIFIER_STEPS}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        folder = cache_dir("audio", f"classifier-{digest}")
        if (folder / "classifier.json").is_file():
            return load_classifier(folder, expect_mel=mel_cfg)
        clf = train_classifier(load_fsdd("train", length=clip_samples), cfg=mel_cfg, steps=CLASSIFIER_STEPS, seed=0)
        try:
            clf.save(folder)
        except OSError:
            pass
        return clf

    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """Always: ``duration_s`` (mean), ``rms`` (mean), ``silent`` (fraction of clips with RMS < 1e-4).
        With FSDD available, for standalone evaluation (no checkpoint) or a model trained on FSDD:
        DiffWave's protocol against the FSDD training split (``fid``, ``is``, ``mis``, ``am``, ``ndb_k``,
        and ``accuracy`` / ``fid_class`` when the clips' labels are known); ``classifier`` is 1 then, else 0."""
        if not objects:
            raise InputError("no audio clips to evaluate")
        rate = self._evaluation_mel(data_config).sample_rate
        waves = self._at_rate(objects, rate)
        rms = np.array([float(torch.sqrt((w.double() ** 2).mean())) if w.numel() else 0.0 for w in waves])
        out: dict = {"n": len(waves), "duration_s": float(np.mean([w.numel() / rate for w in waves])),
                     "rms": float(rms.mean()), "silent": float((rms < 1e-4).mean()), "classifier": 0.0}
        clf = self.evaluation_classifier(data_config)
        if clf is None:
            return out
        from .metrics import evaluate_samples

        ref = load_fsdd("train", length=clf.clip_samples)
        gen = clf.features_and_logits(waves)
        self._heard(clf, waves, gen[1])
        asked = asked_labels([o.get("label_name") for o in objects], clf.label_names)
        res = evaluate_samples(clf, waves, ref, gen_labels=asked,
                               ref_labels=ref.labels, gen_outputs=gen)
        out.update({k: float(v) for k, v in res.items() if k != "n"})
        out["classifier"] = 1.0
        if len(waves) < 2 or not math.isfinite(out.get("fid", 0.0)):
            out.pop("fid", None)
        return out

    def evaluation_pictures(self, objects: Sequence[Any], metrics: dict, folder: Path, data_config: dict) -> list[Path]:
        """``per_class_accuracy.png``: the digit classifier's accuracy per asked label and its confusion
        matrix, from what it heard in these clips when ``metrics`` scored them; [] when the metrics had
        no classifier, or without one, or unless every clip's label is one of the classifier's."""
        from ...core.features import confusion_matrix
        from ...core.pictures import class_accuracy_picture

        if not objects or metrics.get("classifier") == 0.0:
            return []
        clf = self.evaluation_classifier(data_config)
        asked = None if clf is None else asked_labels([o.get("label_name") for o in objects], clf.label_names)
        if asked is None:
            return []
        heard = self._heard(clf, self._at_rate(objects, clf.mel_config.sample_rate))
        confusion = confusion_matrix(asked, heard, len(clf.label_names))
        return [class_accuracy_picture(Path(folder) / ACCURACY_PICTURE, confusion, clf.label_names,
                                       title="the FSDD digit classifier on the evaluated clips", item="clip")]

    def reference_metrics(self, griffin_lim_iters: int = 32) -> dict[str, dict]:
        """The protocol's anchors on FSDD (needs FSDD): ``test`` = the 250 test-split clips scored like
        generated clips, ``griffin_lim`` = the same clips through their mels and Griffin-Lim (the best
        a perfect mel model can score on the Griffin-Lim path)."""
        test = load_fsdd("test", length=8000)
        names = test.label_names
        objs = [{"wave": test.waves[i].numpy(), "sample_rate": 8000, "label_name": names[int(test.labels[i])]}
                for i in range(len(test))]
        cfg = MelConfig()
        rec = mel_to_waveform(waveform_to_mel(test.waves, cfg), cfg, n_iter=griffin_lim_iters, length=8000)
        return {"test": self.metrics(objs, {}),
                "griffin_lim": self.metrics([dict(o, wave=rec[i].numpy()) for i, o in enumerate(objs)], {})}

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        """The FSDD digit model shipped in the package (see weights/fsdd/MODEL_CARD.md)."""
        path = WEIGHTS_DIR / "fsdd"
        return path if (path / "checkpoint.json").is_file() else None
