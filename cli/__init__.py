"""The sciffusion command-line interface."""
