"""Domain registry: every domain, built in or third party, is an entry point in the group
``sciffusion.domains`` whose object is a ``Domain`` subclass (or a factory returning an instance)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from .domain import Domain, denoiser_from_checkpoint
from .io import InputError

GROUP = "sciffusion.domains"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str


class UnknownDomainError(InputError):
    pass


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=GROUP))


def available() -> list[DomainInfo]:
    """Installed domains, sorted by name, with the distribution that provides each."""
    out = []
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        out.append(DomainInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?"))
    return sorted(out, key=lambda d: d.name)


def get_domain(name: str) -> Domain:
    """Instantiate the domain registered under ``name``."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        names = ", ".join(d.name for d in available()) or "none"
        raise UnknownDomainError(f"unknown domain '{name}' (installed: {names})")
    ep = matches[0]
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin must not look like an unknown one
        raise InputError(f"domain '{name}' ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
    try:
        domain = obj() if callable(obj) else obj
    except Exception as e:  # e.g. a Domain subclass that leaves abstract methods unimplemented
        raise InputError(f"domain '{name}' ({ep.value}) cannot be instantiated: {type(e).__name__}: {e}") from e
    if not isinstance(domain, Domain):
        raise InputError(f"domain '{name}' ({ep.value}) is not a sciffusion Domain")
    if not domain.name:
        domain.name = name
    return domain


def provider(domain: Domain) -> dict:
    """The entry point and the distribution (name, version) that provide ``domain``, for the
    records of checkpoints and sample folders."""
    for d in available():
        if d.name == domain.name:
            return {"domain": d.name, "entry_point": d.value, "distribution": d.distribution, "version": d.version}
    module = type(domain).__module__
    return {"domain": domain.name, "entry_point": f"{module}:{type(domain).__qualname__}", "distribution": "?",
            "version": "?"}


def as_domain(domain: "str | Domain") -> Domain:
    """A Domain instance: ``domain`` itself, or the installed domain of that name."""
    return domain if isinstance(domain, Domain) else get_domain(str(domain))


def load_denoiser(path, domain: "str | Domain | None" = None, *, prefer_ema: bool = True, device=None):
    """Rebuild the denoiser of a checkpoint (or run folder) with its weights: (denoiser, checkpoint)."""
    from .checkpoint import check_domain, load_checkpoint

    ckpt = load_checkpoint(path)
    domain = as_domain(ckpt.domain if domain is None else domain)
    check_domain(ckpt, domain.name)
    return denoiser_from_checkpoint(domain, ckpt, prefer_ema=prefer_ema, device=device or "cpu"), ckpt
