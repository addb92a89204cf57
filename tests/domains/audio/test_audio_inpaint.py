"""Audio inpainting through the engine's constraint hook: which mel frames are free, the splice that
keeps the clip outside the span, and batch generation (API and CLI) with the span regenerated."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sciffusion import api
from sciffusion.core.io import InputError
from sciffusion.domains.audio.inpaint import InpaintSpec, free_frames, known_mask, load_inpaint_spec, splice
from sciffusion.domains.audio.mel import MelConfig

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
RATE = 8000
SYNTH_PATTERN = r"^(?P<label>[a-z]+)_synth_(?P<take>\d+)\.wav$"
CFG = MelConfig()


def spec_for(start: int, end: int, fade: int = 0, length: int = 4000) -> InpaintSpec:
    wave = torch.linspace(-0.5, 0.5, length)
    return InpaintSpec("clip.wav", wave, start, end, fade, None)


@pytest.mark.parametrize("start,end", [(0, 80), (1000, 1001), (1000, 2000), (3900, 4000), (2048, 2112)])
def test_free_frames_are_exactly_the_windows_touching_the_span(start, end):
    frames = 4000 // CFG.hop_length + 1
    f0, f1 = free_frames(spec_for(start, end), CFG, frames)
    half = CFG.n_fft // 2
    for f in range(frames):
        lo, hi = f * CFG.hop_length - half, f * CFG.hop_length + half  # window samples [lo, hi)
        touches = lo < end and hi > start
        assert (f0 <= f < f1) == touches, (f, lo, hi)


def test_known_mask_pins_the_clip_mel_outside_the_span():
    spec = spec_for(1000, 2000)
    mel, mask = known_mask(spec, CFG, batch=3)
    assert mel.shape == mask.shape == (3, 1, CFG.n_mels, 63)
    assert mask.dtype == torch.bool and not mask.all() and mask.any()
    assert torch.equal(mel[0], mel[2])
    free = (~mask[0, 0, 0]).nonzero().flatten()
    assert free.min() * CFG.hop_length + CFG.n_fft // 2 > 1000 and (free.max() * CFG.hop_length - CFG.n_fft // 2) < 2000
    assert mask[..., free].logical_not().all()


def test_splice_keeps_the_clip_outside_the_span_and_crossfades_inside():
    spec = spec_for(1000, 2000, fade=80)
    gen = torch.full((4000,), 0.9)
    out = splice(gen, spec)
    assert torch.equal(out[:1000], spec.wave[:1000]) and torch.equal(out[2000:], spec.wave[2000:])
    assert torch.allclose(out[1080:1920], gen[1080:1920])
    ramp = (out[1000:1080] - spec.wave[1000:1080]) / (gen[1000:1080] - spec.wave[1000:1080])
    assert (ramp.diff() > 0).all() and 0 < ramp[0] < 0.02 and 0.98 < ramp[-1] < 1


def test_inpaint_spec_errors_name_the_file(tmp_path):
    clip = tmp_path / "low_synth_0.wav"
    sf.write(str(clip), np.zeros(4000, dtype=np.float32), RATE)
    long = tmp_path / "long.wav"
    sf.write(str(long), np.zeros(9000, dtype=np.float32), RATE)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    cases = [
        ({"inpaint": str(tmp_path / "missing.wav"), "inpaint_span": [0.1, 0.2]}, "missing.wav: sample.inpaint names no such file"),
        ({"inpaint": str(bad), "inpaint_span": [0.1, 0.2]}, "bad.wav: not a readable audio file"),
        ({"inpaint": str(long), "inpaint_span": [0.1, 0.2]}, "long.wav: 1.125 s long; the model makes 0.500 s clips"),
        ({"inpaint": str(clip), "inpaint_span": [0.3, 0.6]}, "ends at 0.6 s, after the clip's end (0.500 s)"),
        ({"inpaint": str(clip), "inpaint_span": [0.3, 0.2]}, "must satisfy 0 <= start < end"),
        ({"inpaint": str(clip)}, "must be [start_s, end_s]"),
    ]
    for sample_cfg, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_inpaint_spec(sample_cfg, CFG, 4000, SYNTH_PATTERN)
    spec = load_inpaint_spec({"inpaint": str(clip), "inpaint_span": [0.1, 0.2]}, CFG, 4000, SYNTH_PATTERN)
    assert (spec.start, spec.end, spec.fade, spec.label_name) == (800, 1600, 80, "low")
    assert load_inpaint_spec({"inpaint": ""}, CFG, 4000, SYNTH_PATTERN) is None


@pytest.fixture(scope="module")
def tiny_model(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("inpaint-run")
    api.train("audio", overrides=[f"data.path={synth_dir}", f"data.label_pattern={SYNTH_PATTERN}", "data.seconds=0.5",
                                  "model.channels=8", "model.mults=[1,2]", "model.res_blocks=1", "train.steps=15",
                                  "train.batch_size=8", "train.ckpt_every=15", "train.log_every=15"],
              out=out, progress=False)
    return out


def _pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767) / 32767


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "repaint"])
def test_sample_inpaints_the_span_and_keeps_the_rest(tiny_model, synth_dir, tmp_path, sampler):
    clip = synth_dir / "mid_synth_3.wav"
    orig, _ = sf.read(str(clip), dtype="float32")
    out = tmp_path / sampler
    res = api.sample(tiny_model, out, n=3, overrides=[f"sample.inpaint={clip}", "sample.inpaint_span=[0.2,0.3]",
                                                       f"sample.sampler={sampler}", "sample.steps=6",
                                                       *(["sample.resample=2"] if sampler == "repaint" else []),
                                                       "sample.griffin_lim_iters=4"],
                     progress=False)
    assert res.files == 3
    waves = [sf.read(str(p), dtype="float64")[0] for p in sorted(out.glob("*.wav"))]
    s, e = 1600, 2400
    for w in waves:
        assert w.shape == orig.shape
        assert np.abs(w[:s] - _pcm16(orig[:s])).max() < 1.5 / 32767
        assert np.abs(w[e:] - _pcm16(orig[e:])).max() < 1.5 / 32767
        assert np.abs(w[s + 80:e - 80] - orig[s + 80:e - 80]).max() > 1e-3  # the span is regenerated
    assert np.abs(waves[0][s:e] - waves[1][s:e]).max() > 1e-3  # seeds give different fills


def test_repaint_without_a_span_and_bad_spans_fail_cleanly_in_the_cli(tiny_model, synth_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        return subprocess.run([SCIFFUSION, "sample", str(tiny_model), "-n", "2", "--steps", "2", *map(str, args)],
                              capture_output=True, text=True, timeout=300, env=env)

    p = run("--out", tmp_path / "a", "sample.sampler=repaint")
    assert p.returncode == 1 and "pins none (nothing to inpaint)" in p.stderr
    clip = synth_dir / "low_synth_1.wav"
    p = run("--out", tmp_path / "b", f"sample.inpaint={clip}", "sample.inpaint_span=[0.4,0.9]")
    assert p.returncode == 1 and "low_synth_1.wav: sample.inpaint_span ends at 0.9 s" in p.stderr
    assert not list((tmp_path / "b").glob("*.wav"))
