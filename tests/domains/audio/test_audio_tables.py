"""The audio and vocoder domains' configuration: typed tables (each default once, range checks,
unknown keys refused with a suggestion), defaults() holding only the engine tables' values, and the
module layout (the arrow runs domain -> vocoder; no import cycle inside the audio package)."""

import ast
import dataclasses
from pathlib import Path

import pytest

from sciffusion.core.config import ConfigError, flatten
from sciffusion.core.domain import ENGINE_TABLES, resolve_config
from sciffusion.core.registry import get_domain
from sciffusion.domains.audio import tables
from sciffusion.domains.audio.mel import MelConfig, mel_config_of

AUDIO = Path(tables.__file__).parent
#: engine keys a domain names even where they equal the engine's default: its recipe's choices
PINNED = {"process.name", "objective.prediction", "sample.sampler"}


def audio_imports(path: Path) -> set[str]:
    """The audio modules one module imports, at top level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sciffusion.domains.audio."):
            out.add(node.module.split(".")[3])
    return {m for m in out if (AUDIO / f"{m}.py").is_file()}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: audio_imports(p) for p in AUDIO.glob("*.py") if p.stem != "__init__"}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_vocoder_never_imports_the_mel_domain_and_there_is_no_cycle():
    graph = import_graph()
    assert "vocoder" in graph["domain"] and "domain" not in reachable(graph, "vocoder")
    cycles = [m for m in graph if m in reachable(graph, m)]
    assert not cycles, f"import cycles through {cycles}"


def table_keys(cls, values: dict) -> dict:
    """The keys of a table given its selector's value (a process's parameters, a sampler's options)."""
    keys = dict(cls.fields())
    if cls.selector is not None:
        keys.update(cls.choice_fields(values.get(cls.selector, keys[cls.selector].default)) or {})
    return keys


@pytest.mark.parametrize("name", ["audio", "vocoder"])
def test_defaults_hold_only_the_engine_tables_values(name):
    domain = get_domain(name)
    assert set(domain.tables()) == {"model", "data", "sample"}
    defaults = domain.defaults()
    assert set(defaults) <= set(ENGINE_TABLES), "model and data defaults live in the domain's tables"
    for table, values in defaults.items():
        keys = table_keys(ENGINE_TABLES[table], values)
        for key, value in values.items():
            assert key in keys, f"{table}.{key} is not an engine key: its default belongs in the domain's tables()"
            same = keys[key].default == value
            assert not same or f"{table}.{key}" in PINNED, f"{table}.{key} = {value!r} repeats the table default"


@pytest.mark.parametrize("cls", [tables.AudioModel, tables.AudioData, tables.AudioSample, tables.VocoderModel,
                                 tables.VocoderData, tables.VocoderSample])
def test_every_default_has_a_one_line_comment(cls):
    source = Path(tables.__file__).read_text().splitlines()
    own = [f.name for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})]
    assert own
    for name in own:
        line = next(s for s in source if s.strip().startswith(f"{name}:") and " = " in s)
        assert "  # " in line and line.split("  # ", 1)[1].strip(), f"{cls.__name__}.{name} has no comment"


def test_the_default_config_keeps_its_values():
    cfg = resolve_config(get_domain("audio"))
    assert cfg["model"] == {"network": "unet1d", "channels": 96, "mults": [1, 2, 2], "res_blocks": 2, "emb_dim": 0,
                            "dropout": 0.0}
    assert cfg["sample"]["label"] == -1 and cfg["sample"]["vocoder"] == "griffin_lim"
    assert cfg["sample"]["batch_size"] == 64 and cfg["sample"]["steps"] == 50
    assert mel_config_of(cfg) == MelConfig()
    voc = resolve_config(get_domain("vocoder"))
    assert voc["process"] == {"name": "ddpm_linear", "timesteps": 50, "beta_start": 1e-4, "beta_end": 0.05}
    assert voc["data"]["segment_seconds"] == 0.25 and voc["data"]["label_pattern"] == cfg["data"]["label_pattern"]
    assert voc["sample"]["input"] == "" and "label" not in voc["sample"]


@pytest.mark.parametrize("override, match", [
    ("sample.griffin_lim_iter=8", "did you mean 'griffin_lim_iters'"),
    ("sample.griffin_lim_iters=0", "sample.griffin_lim_iters: must be >= 1"),
    ("sample.label=-2", "sample.label: must be >= -1"),
    ("sample.label=true", "sample.label: must be an integer or a string"),
    ("sample.inpaint_fade=-0.1", "sample.inpaint_fade: must be >= 0"),
    ("data.seconds=0", "data.seconds: must be > 0"),
    ("data.sample_rate=0", "data.sample_rate: must be >= 1"),
    ("data.mel.n_mel=32", "data.mel.n_mel: unknown mel setting \\(did you mean 'n_mels'\\?\\)"),
    ("data.mel.n_mels=0", "data.mel: invalid data.mel settings"),
    ("model.network=unet3d", "model.network: must be one of 'unet1d', 'unet'"),
    ("model.mults=[]", "model.mults: must list at least one level"),
    ("model.mults=[1,0]", "model.mults: must be >= 1"),
    ("model.dropout=1.0", r"model.dropout: must be in \[0, 1\)"),
])
def test_audio_keys_are_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(get_domain("audio"), overrides=[override])


def test_a_label_is_an_index_or_a_name():
    audio = get_domain("audio")
    assert resolve_config(audio, overrides=["sample.label=7"])["sample"]["label"] == 7
    assert resolve_config(audio, overrides=["sample.label=seven"])["sample"]["label"] == "seven"


@pytest.mark.parametrize("override, match", [
    ("data.segment_seconds=0", "data.segment_seconds: must be > 0"),
    ("model.layers=0", "model.layers: must be >= 1"),
    ("model.network=wavenet", "model.network: must be one of 'diffwave'"),
    ("sample.label=3", "unknown key"),
    ("sample.inputs=x", "did you mean 'input'"),
])
def test_vocoder_keys_are_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(get_domain("vocoder"), overrides=[override])


def test_mel_overrides_reach_the_mel_config():
    cfg = resolve_config(get_domain("audio"), overrides=["data.sample_rate=16000", "data.mel.n_mels=80"])
    mel = mel_config_of(cfg)
    assert mel.sample_rate == 16000 and mel.n_mels == 80 and mel.f_max == 4000.0
    assert flatten(cfg)["data.mel.n_mels"] == 80
