"""The ``sciffusion`` command line: thin commands over ``sciffusion.api``.

Exit codes: 0 ok; 1 failure, with a one-line message (``--verbose`` for the traceback); 2 usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import __version__

app = typer.Typer(
    name="sciffusion",
    help="Diffusion models for scientific data: train, sample and evaluate models of any installed domain.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

_state = {"verbose": False}

OverridesArg = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted config overrides, e.g. train.lr=3e-4 model.hidden=128")
SampleOverridesArg = typer.Argument(None, metavar="[sample.KEY=VALUE]...",
                                    help="Dotted sampling overrides, e.g. sample.steps=100 sample.label=7 sample.eta=1")


def _sampler_names() -> str:
    from ..core.samplers import SAMPLERS

    return ", ".join(sorted(SAMPLERS))


def _grid_names() -> str:
    from ..core.grids import GRIDS

    return ", ".join(sorted(GRIDS))


def _fail(exc: BaseException) -> None:
    if _state["verbose"]:
        raise exc
    msg = str(exc) or type(exc).__name__
    typer.echo(f"error: {msg.splitlines()[0] if msg else type(exc).__name__}", err=True)
    raise typer.Exit(1)


def _run(fn, *args, **kwargs):
    """Call the API; user-facing failures become one line on stderr and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as e:
        _fail(e)


def _emit(obj, as_json: bool, render) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        render(obj)


def _table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def _version_callback(value: bool):
    if value:
        typer.echo(f"sciffusion {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
):
    _state["verbose"] = verbose


@app.command()
def domains(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List installed domains, their versions and where they come from."""
    from .. import api

    found = _run(api.domains)

    def render(rows):
        from rich.console import Console
        from rich.table import Table

        if not rows:
            typer.echo("no domains installed")
            return
        t = Table("domain", "description", "from", "version", "entry point")
        for r in rows:
            t.add_row(r["name"], r["description"], r["distribution"], r["version"], r["entry_point"])
        Console().print(t)

    _emit(found, as_json, render)


@app.command()
def train(
    domain: str = typer.Argument(..., help="Domain name (see `sciffusion domains`)."),
    overrides: Optional[List[str]] = OverridesArg,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run folder (checkpoints, logs)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the run folder's last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when a terminal)."),
):
    """Train a model of DOMAIN; resumes from OUT's last checkpoint."""
    from .. import api
    from ..core.config import dump_toml

    cfg = _run(api.config, domain, config, overrides or [])
    if dry_run:
        typer.echo(dump_toml(cfg), nl=False)
        return
    result = _run(api.train, domain, cfg, out, device=device, resume=resume, progress=progress)
    typer.echo(f"trained {domain} to step {result.step}: {result.checkpoint}")


@app.command()
def sample(
    model: str = typer.Argument(..., help="A checkpoint (folder or run folder) or a domain name (its shipped model)."),
    overrides: Optional[List[str]] = SampleOverridesArg,
    n: Optional[int] = typer.Option(None, "-n", "--num", min=1, help="Generate seeds 0..N-1."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds: a range 0-9999 or a list 3,5,8."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Output folder (resumable)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1),
    sampler: Optional[str] = typer.Option(None, "--sampler", help=f"Sampler: {_sampler_names()}."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps (intervals of the time grid)."),
    grid: Optional[str] = typer.Option(None, "--grid", help=f"Time grid: {_grid_names()}."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance weight (0 = none)."),
    device: Optional[str] = typer.Option(None, "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear OUT first instead of resuming."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
    part: Optional[str] = typer.Option(None, "--part", help="K/N: generate only part K (0..N-1) of N independent "
                                                            "jobs writing into OUT (a job array)."),
    verify: bool = typer.Option(False, "--verify", help="Report which seeds are missing or damaged in OUT "
                                                        "(exit 1 if any) and generate nothing."),
):
    """Generate samples in shards with a manifest; run the same command again to resume."""
    from .. import api
    from ..core.config import dump_toml

    if (n is None) == (seeds is None):
        typer.echo("error: give exactly one of -n/--num or --seeds", err=True)
        raise typer.Exit(2)
    kwargs = dict(n=n, seeds=seeds, batch_size=batch_size, sampler=sampler, steps=steps, grid=grid,
                  guidance=guidance, overrides=overrides or [], device=device, progress=progress)
    if dry_run:
        keep = ("batch_size", "sampler", "steps", "grid", "guidance", "overrides")
        typer.echo(dump_toml(_run(api.sample_config, model, **{k: kwargs[k] for k in keep})), nl=False)
        return
    if verify:
        state = _run(api.verify, model, out, n=n, seeds=seeds, overrides=overrides or [])
        if state["missing"]:
            shown = ", ".join(map(str, state["missing"][:20])) + (", ..." if len(state["missing"]) > 20 else "")
            typer.echo(f"error: {out}: {len(state['missing'])} of {state['seeds']} seeds missing or damaged "
                       f"(shards {state['incomplete_shards'][:20]}): {shown}; run the same command (or its part) "
                       "again to repair them", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}: all {state['seeds']} seeds intact in {state['shards']} shards"
                   + ("" if state["manifest"] else "; the manifest is not written yet (run any part once more)"))
        return
    result = _run(api.sample, model, out, overwrite=overwrite, part=part, **kwargs)
    typer.echo(f"{result.files} samples in {result.out} ({result.generated} generated now, {result.skipped} already there; "
               f"{result.network_calls} network calls per sample); manifest {result.manifest}")


@app.command()
def evaluate(
    domain: str = typer.Argument(..., help="Domain whose reader and metrics to use."),
    paths: List[Path] = typer.Argument(..., help="Files or folders (folders: every file with the domain's suffix)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint whose training-data facts the metrics use."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files and count them instead of failing."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json and the evaluation's "
                                                                 "pictures (default: FOLDER/evaluation for one folder)."),
    write: bool = typer.Option(True, "--write/--no-write", help="Keep metrics.json and the pictures."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Score files written by sciffusion or any other tool; keep the numbers and pictures beside them."""
    from .. import api

    metrics = _run(api.evaluate, domain, paths, checkpoint=checkpoint, skip_bad=skip_bad, out=out, write=write)
    _emit(metrics, as_json, lambda m: _table([(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in m.items()],
                                             title=f"{domain} evaluation"))
    folder = api.evaluation_folder(paths, out) if write else None
    if folder is not None and not as_json and (folder / "metrics.json").is_file():  # not when it could not be kept
        typer.echo(f"kept the record and pictures in {folder}", err=True)


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="Samples folders (sciffusion sample) and/or training run folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file (default: report.html in the first folder)."),
    max_items: int = typer.Option(24, "--max-items", min=0, help="Samples shown per samples folder (the first, by seed)."),
):
    """Write one self-contained HTML page: metrics, pictures, players, 3D molecules, card, config, provenance."""
    from .. import api

    path = _run(api.report, paths, out, max_items=max_items)
    typer.echo(f"wrote {path}")


@app.command()
def info(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder, run folder or a file inside a checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Show what a checkpoint holds: domain, config, step, hash, recorded metrics."""
    from .. import api

    data = _run(api.info, checkpoint)

    def render(d):
        rows = [(k, str(d[k])) for k in ("path", "domain", "step", "hash", "sciffusion_version", "parameters", "has_ema", "has_optimizer")]
        plugin = d.get("plugin") or {}
        if plugin:
            rows.append(("provided by", f"{plugin.get('distribution')} {plugin.get('version')} ({plugin.get('entry_point')})"))
        rows += [(f"file {k}", f"{v:,} bytes") for k, v in d["files"].items()]
        rows += [(f"metric {k}", f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in d["metrics"].items()]
        _table(rows, title="checkpoint")
        from ..core.config import dump_toml

        typer.echo("# config\n" + (dump_toml(d["config"]) if d["config"] else "(no config recorded)\n"), nl=False)
        typer.echo("\n# data config (facts of the training data)\n" +
                   (dump_toml(d["data_config"]) if d["data_config"] else "(none)\n"), nl=False)

    _emit(data, as_json, render)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder or run folder (its latest checkpoint)."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[sample.KEY=VALUE]...",
                                                    help="Sampling defaults the copy carries, e.g. sample.steps=100"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the weights-only checkpoint."),
    replace: bool = typer.Option(False, "--replace", help="Swap out a checkpoint already at OUT."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA weights."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Write a weights-only copy of a checkpoint (EMA weights, no optimizer) to ship or share."""
    from .. import api

    data = _run(api.export, checkpoint, out, overrides=overrides or [], replace=replace, prefer_ema=not raw)
    _emit(data, as_json, lambda d: typer.echo(
        f"exported step {d['step']} ({'EMA' if d['used_ema'] else 'raw'} weights) of {d['source']} -> {d['path']} "
        f"(hash {d['hash'][:12]})"))


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Versions, devices and installed domains, for bug reports."""
    from .. import api

    data = _run(api.env)

    def render(d):
        rows = [(k, str(v)) for k, v in d.items() if k not in ("packages", "cuda_devices")]
        rows += [(f"device {x['index']}", f"{x['name']} ({x['memory_gib']} GiB, sm {x['capability']})") for x in d["cuda_devices"]]
        rows += [(k, str(v)) for k, v in d["packages"].items()]
        _table(rows, title="sciffusion environment")

    _emit(data, as_json, render)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SystemExit:
        raise
    except Exception as e:  # anything unexpected still exits 1 with one line (traceback with --verbose)
        if _state["verbose"]:
            raise
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
