"""Typed configuration: defaults written once, unknown keys refused with a suggestion, errors that
name the layer (file) that set the key, selector keys whose choice owns the table's other keys."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from sciffusion.core.config import ConfigError, dump_toml, load_toml, overrides_layer, resolve
from sciffusion.core.domain import ENGINE_TABLES, config_schema, resolve_config
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.core.schema import Annotated, Check, Table, one_of, specs_of_defaults

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")


@dataclass(frozen=True)
class Toy(Table):
    selector: ClassVar[str] = "kind"
    kind: Annotated[str, one_of(("a", "b"))] = "a"  # which toy
    size: Annotated[int, Check(lo=1)] = 3  # how big
    rate: Annotated[float, Check(lo=0, hi=1)] = 0.5  # how fast
    names: list[str] = field(default_factory=list)  # what it is called

    @classmethod
    def choice_fields(cls, value):
        return {"a": specs_of_defaults({"alpha": 1.0}), "b": specs_of_defaults({"beta": 2, "gamma": "x"})}.get(value)


def _resolve(*layers):
    return resolve({"toy": Toy}, [(f"layer{i}", layer) for i, layer in enumerate(layers)], domain="d")


def test_defaults_are_filled_and_ints_become_floats_for_float_keys():
    cfg = _resolve({"toy": {"rate": 1}})
    assert cfg == {"domain": "d", "toy": {"kind": "a", "size": 3, "rate": 1.0, "names": [], "alpha": 1.0}}
    assert isinstance(cfg["toy"]["rate"], float)


@pytest.mark.parametrize("layer, message", [
    ({"toy": {"sise": 4}}, r"layer0: toy.sise: unknown key for kind = 'a' \(did you mean 'size'\?\)"),
    ({"toi": {"size": 4}}, r"layer0: unknown section \[toi\] \(did you mean 'toy'\?\)"),
    ({"toy": {"size": 0}}, r"layer0: toy.size: must be >= 1, got 0"),
    ({"toy": {"size": 2.5}}, r"toy.size: must be an integer, got 2.5"),
    ({"toy": {"size": True}}, r"toy.size: must be an integer, got True"),
    ({"toy": {"rate": float("nan")}}, r"toy.rate: must be a finite number"),
    ({"toy": {"rate": 2.0}}, r"toy.rate: must be in \[0, 1\], got 2.0"),
    ({"toy": {"names": "x"}}, r"toy.names: must be a list of strings"),
    ({"toy": {"kind": "c"}}, r"toy.kind: must be one of 'a', 'b', got 'c'"),
    ({"toy": 3}, r"\[toy\] must be a table"),
    ({"domain": "other"}, r"the config is for domain 'other', not 'd'"),
])
def test_bad_values_are_errors_naming_the_layer_and_key(layer, message):
    with pytest.raises(InputError, match=message):
        _resolve(layer)


def test_a_selector_change_drops_the_old_choices_keys():
    """Layer 1 picks kind b: alpha (kind a's key, set by layer 0) goes; a key of a choice that is not
    chosen is an error naming the choice."""
    assert _resolve({"toy": {"alpha": 5.0}}, {"toy": {"kind": "b"}})["toy"] == {
        "kind": "b", "size": 3, "rate": 0.5, "names": [], "beta": 2, "gamma": "x"}
    with pytest.raises(ConfigError, match=r"layer1: toy.alpha: unknown key for kind = 'b'"):
        _resolve({"toy": {"kind": "a"}}, {"toy": {"kind": "b", "alpha": 1.0}})
    assert _resolve({"toy": {"alpha": 5.0}}, {"toy": {"kind": "a", "size": 9}})["toy"]["alpha"] == 5.0  # same choice


def test_every_domain_default_config_resolves_and_round_trips_through_toml(tmp_path):
    for name in ("molecules", "audio", "vocoder"):
        d = get_domain(name)
        cfg = d.default_config()
        assert set(cfg) == {"domain", "data", "model", *ENGINE_TABLES}
        (tmp_path / f"{name}.toml").write_text(dump_toml(cfg))
        assert resolve_config(d, tmp_path / f"{name}.toml") == cfg


def test_the_shipped_checkpoints_configs_resolve_unchanged():
    """A checkpoint written before the typed tables still resolves (old keys are all known), and
    resolving adds only defaults for new keys: every stored value stays as it was."""
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.core.config import flatten

    for name in ("molecules", "audio", "vocoder"):
        d = get_domain(name)
        ckpt = load_checkpoint(d.default_checkpoint())
        cfg = resolve_config(d, base=ckpt.config)
        stored, now = flatten(ckpt.config), flatten(cfg)
        assert {k: now[k] for k in stored} == stored, name


def test_another_process_on_a_domain_whose_defaults_set_process_parameters(tmp_path):
    """molecules' default process is EDM's polynomial schedule (timesteps, power, precision): choosing
    rectified_flow from the command line or from a file gives a clean rectified-flow table, and a
    polynomial key beside it is an error naming the process."""
    mol = get_domain("molecules")
    assert resolve_config(mol, overrides=["process.name=rectified_flow"])["process"] == {"name": "rectified_flow"}
    f = tmp_path / "rf.toml"
    f.write_text('[process]\nname = "rectified_flow"\n')
    assert resolve_config(mol, f)["process"] == {"name": "rectified_flow"}
    with pytest.raises(ConfigError, match=r"command line: process.power: unknown key for name = 'rectified_flow'"):
        resolve_config(mol, f, ["process.power=3"])
    den = mol.build_denoiser(resolve_config(mol, f, ["model.hidden=8", "model.layers=1", "objective.prediction=velocity"]),
                             {"atomic_numbers": [1, 6], "properties": {}})
    assert den.process.name == "rectified_flow"


def test_errors_from_a_config_file_name_the_file(tmp_path):
    mol = get_domain("molecules")
    f = tmp_path / "my.toml"
    f.write_text('[train]\nstpes = 10\n')
    with pytest.raises(InputError, match=rf"{f}: train.stpes: unknown key .*did you mean 'steps'"):
        resolve_config(mol, f)
    f.write_text('[train]\nlr = -1.0\n')
    with pytest.raises(InputError, match=rf"{f}: train.lr: must be > 0, got -1.0"):
        resolve_config(mol, f)
    f.write_text('[samples]\nsteps = 10\n')
    with pytest.raises(InputError, match=rf"{f}: unknown section \[samples\] \(did you mean 'sample'"):
        resolve_config(mol, f)


def test_guidance_without_condition_dropout_is_refused_by_the_engine_for_every_domain():
    for name in ("audio", "molecules"):
        with pytest.raises(ConfigError, match="condition_dropout > 0"):
            resolve_config(get_domain(name), overrides=["objective.condition_dropout=0", "sample.guidance=1.5"])


def test_a_plugin_without_a_schema_gets_one_from_its_defaults(points2d):
    schema = config_schema(points2d)
    assert set(schema["model"].fields()) == {"hidden", "layers"}
    with pytest.raises(ConfigError, match=r"model.hiden: unknown key .*did you mean 'hidden'"):
        resolve_config(points2d, overrides=["model.hiden=3"])
    assert resolve_config(points2d, overrides=["sample.label=1"])["sample"]["label"] == 1


def test_overrides_layer_parses_toml_literals():
    assert overrides_layer(["a.b=1e-4", "a.c=true", "a.d=[1, 2]", "a.e=word", "f.g.h='x'"]) == {
        "a": {"b": 1e-4, "c": True, "d": [1, 2], "e": "word"}, "f": {"g": {"h": "x"}}}
    with pytest.raises(InputError, match="must look like key.sub=value"):
        overrides_layer(["nonsense"])


@pytest.mark.parametrize("args, message", [
    (["train", "molecules", "--dry-run", "train.stpes=10"], "train.stpes: unknown key"),
    (["sample", "molecules", "-n", "1", "--out", "{out}", "sample.stepz=5"], "sample.stepz: unknown key"),
    (["train", "molecules", "--dry-run", "process.name=rectified_flow", "process.timesteps=5"],
     "process.timesteps: unknown key for name = 'rectified_flow'"),
])
def test_the_cli_refuses_typos_with_exit_code_1(args, message, tmp_path):
    args = [a.replace("{out}", str(tmp_path / "out")) for a in args]
    r = subprocess.run([SCIFFUSION, *args], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_a_clean_process_table():
    r = subprocess.run([SCIFFUSION, "train", "molecules", "--dry-run", "process.name=rectified_flow"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = load_toml_text(r.stdout)
    assert cfg["process"] == {"name": "rectified_flow"}


def load_toml_text(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_load_toml_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train\n")
    with pytest.raises(InputError, match=rf"{f}: not valid TOML"):
        load_toml(f)
    with pytest.raises(InputError, match="config file not found"):
        load_toml(tmp_path / "missing.toml")


def test_dry_run_names_a_missing_data_path(tmp_path):
    missing = tmp_path / "nope.sdf"
    r = subprocess.run([SCIFFUSION, "train", "molecules", "--dry-run", f"data.path='{missing}'"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and f"{missing}: no such file or folder (data.path" in r.stderr


def test_a_run_folders_config_json_is_a_config_file(tmp_path):
    mol = get_domain("molecules")
    cfg = resolve_config(mol, overrides=["model.hidden=32", "process.name=rectified_flow"])
    f = tmp_path / "config.json"
    f.write_text(__import__("json").dumps(cfg))
    assert resolve_config(mol, f) == cfg
    f.write_text("[1, 2]")
    with pytest.raises(InputError, match="a JSON config must be an object"):
        load_toml(f)
    f.write_text("{nope")
    with pytest.raises(InputError, match=rf"{f}: not valid JSON"):
        load_toml(f)
