"""sciffusion: diffusion models for scientific data.

One domain-agnostic diffusion engine (``sciffusion.core``) and pluggable domains
(``sciffusion.domains``), used from Python, from the ``sciffusion`` CLI, or as batch pipelines.
The public functions (``train``, ``sample``, ``generate``, ``evaluate``, ``info``, ``export``, ``domains``, ``env``) live in
``sciffusion.api`` and are importable from here.
"""

from .core.version import __version__

_API = ("domains", "config", "train", "sample", "generate", "verify", "sample_config", "evaluate", "info", "export", "env")


def __getattr__(name):  # lazy: `import sciffusion` stays cheap
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sciffusion' has no attribute {name!r}")
