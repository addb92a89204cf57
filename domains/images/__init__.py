"""Images: folders of PNG/JPEG/TIFF/NPY/NPZ and built-in data (``data``, ``dataset``), the U-Net and
the DiT (``unet``, ``dit``, ``networks``), editing (``edits``: inpainting, SDEdit, super-resolution),
PNG output and sample grids (``output``), and evaluation on a classifier trained here (``classifier``,
``metrics``, ``scoring``). See docs/images.md."""

from .domain import ImagesDomain
from .units import to_data, to_model

__all__ = ["ImagesDomain", "to_data", "to_model"]
