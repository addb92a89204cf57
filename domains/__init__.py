"""Built-in domain backends; each registers through the `sciffusion.domains` entry-point group."""
