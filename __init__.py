"""sciffusion: diffusion models for scientific data.

One domain-agnostic diffusion engine (``sciffusion.core``) and pluggable domains
(``sciffusion.domains``), used from Python, from the ``sciffusion`` CLI, or as batch pipelines.
"""

__version__ = "0.1.0"
