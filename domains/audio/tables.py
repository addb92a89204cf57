"""The typed config tables of the audio domain (mel model) and the vocoder domain: every key once,
with its default, its checks and a one-line comment. ``AudioDomain.tables`` and
``VocoderDomain.tables`` return them; the engine tables' values of each domain are in its
``defaults()``.

The vocoder reads the same files as the mel model, so ``VocoderData`` is ``AudioData`` plus the
training segment length.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Union

from ...core.config import Annotated, Check, ConfigError, Table, one_of
from ...core.io import InputError
from ...core.sampling import SampleConfig
from .data import FSDD_PATTERN
from .mel import MelConfig, run_mel_config

__all__ = ["AudioModel", "AudioData", "AudioSample", "VocoderModel", "VocoderData", "VocoderSample",
           "MEL_NETWORKS", "VOCODER_NETWORKS"]

MEL_NETWORKS = ("unet1d", "unet")
VOCODER_NETWORKS = ("diffwave",)
MEL_FIELDS = tuple(f.name for f in dataclasses.fields(MelConfig))


# ----------------------------------------------------------------------------- the mel model


@dataclass(frozen=True)
class AudioModel(Table):
    """``[model]`` of the mel model: a conditional U-Net (``unet.build_unet1d`` / ``build_unet``)."""

    network: Annotated[str, one_of(MEL_NETWORKS)] = "unet1d"  # unet1d (mel bands as channels, over time) or unet (2-D)
    channels: Annotated[int, Check(lo=1)] = 96  # width of the first level
    mults: Annotated[list[int], Check(lo=1)] = field(default_factory=lambda: [1, 2, 2])  # width factor per level
    res_blocks: Annotated[int, Check(lo=1)] = 2  # residual blocks per level (one more on the way up)
    emb_dim: Annotated[int, Check(lo=0)] = 0  # time/label embedding width (0: 4 x channels)
    dropout: Annotated[float, Check(lo=0, hi=1, hi_open=True)] = 0.0  # dropout inside the residual blocks

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        if not table["mults"]:
            raise ConfigError("model.mults", "must list at least one level, e.g. [1, 2, 2]")


@dataclass(frozen=True)
class AudioData(Table):
    """``[data]``: FSDD (the default) or a folder of WAV/FLAC, clips cropped or padded to ``seconds``."""

    path: str = ""  # a folder of WAV/FLAC files (empty: FSDD, see data.fsdd_root)
    label_pattern: str = FSDD_PATTERN  # file-name regex with a named group "label" (empty: unlabelled)
    labels_csv: str = ""  # a CSV "file,label" instead of the pattern (paths relative to data.path)
    sample_rate: Annotated[int, Check(lo=1)] = 8000  # Hz; files at other rates are resampled
    seconds: Annotated[float, Check(lo=0, lo_open=True)] = 1.0  # clip length (centre-crop / zero-pad)
    split_every: Annotated[int, Check(lo=0)] = 10  # every k-th file (sorted) is a test file (0/1: no test split)
    split_group: str = ""  # split by this named group of label_pattern instead (e.g. "speaker")
    split_test_values: list[Union[int, str]] = field(default_factory=list)  # split_group values of the test split
    skip_bad: bool = False  # skip unreadable or unlabelled files (listed) instead of failing
    downmix: bool = False  # average the channels of multi-channel files (else they are errors)
    mel: dict = field(default_factory=dict)  # overrides of the frozen mel settings (MelConfig fields)

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        unknown = [k for k in table["mel"] if k not in MEL_FIELDS]
        if unknown:
            near = difflib.get_close_matches(unknown[0], MEL_FIELDS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"data.mel.{unknown[0]}", f"unknown mel setting{hint}; the MelConfig fields are "
                                                        f"{', '.join(MEL_FIELDS)}")
        try:
            run_mel_config(table)
        except InputError as e:
            raise ConfigError("data.mel", str(e).split(": ", 1)[1]) from None


@dataclass(frozen=True)
class AudioSample(SampleConfig):
    """``[sample]`` plus the mel model's own keys (see ``domain.AudioDomain.template``)."""

    label: Annotated[Union[int, str], Check(lo=-1)] = -1  # index or name (-1: drawn per seed)
    griffin_lim_iters: Annotated[int, Check(lo=1)] = 32  # Griffin-Lim iterations of the griffin_lim vocoder
    spectrograms: bool = True  # write {seed}.png (the mel beside a real clip) with each WAV
    grid_picture: bool = True  # write grid.png (spectrograms of the run's first 16 clips) when the run completes
    inpaint: str = ""  # a WAV/FLAC file whose span is regenerated (empty: no inpainting)
    inpaint_span: Annotated[list[float], Check(lo=0)] = field(default_factory=list)  # [start_s, end_s] to regenerate
    inpaint_fade: Annotated[float, Check(lo=0)] = 0.01  # seconds of crossfade at each end of the span
    vocoder: str = "griffin_lim"  # griffin_lim, shipped (weights/fsdd_vocoder) or a vocoder checkpoint folder


# ----------------------------------------------------------------------------- the vocoder


@dataclass(frozen=True)
class VocoderModel(Table):
    """``[model]`` of the vocoder: DiffWave (``wavenet.build_diffwave``)."""

    network: Annotated[str, one_of(VOCODER_NETWORKS)] = "diffwave"  # the only vocoder network
    residual_channels: Annotated[int, Check(lo=1)] = 64  # channels of the residual stack
    layers: Annotated[int, Check(lo=1)] = 30  # residual layers
    dilation_cycle: Annotated[int, Check(lo=1)] = 10  # dilations 1, 2, ..., 2^(cycle-1), repeated
    step_dim: Annotated[int, Check(lo=2)] = 128  # sinusoidal step-embedding width
    step_hidden: Annotated[int, Check(lo=1)] = 512  # step MLP width
    upsample_strides: Annotated[list[int], Check(lo=1)] = field(default_factory=list)  # product = hop ([]: auto)


@dataclass(frozen=True)
class VocoderData(AudioData):
    """``[data]`` of the vocoder: the mel model's data keys plus the training segment length."""

    segment_seconds: Annotated[float, Check(lo=0, lo_open=True)] = 0.25  # training segment (whole hops)


@dataclass(frozen=True)
class VocoderSample(SampleConfig):
    """``[sample]`` plus the vocoder's copy-synthesis input."""

    input: str = ""  # a WAV/FLAC file or folder to re-synthesise, seed s = s-th file (empty: the test split)
