"""The version of sciffusion (the core's own source of it: core never imports the package root)."""

__version__ = "0.1.0"
