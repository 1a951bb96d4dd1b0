"""File suffixes of the inputs Viewforge reads."""

from __future__ import annotations

#: Image files an input may be (lower case): a photo of a folder without cameras, an image that
#: ``viewforge batch`` turns into a generate job. :func:`viewforge.engine.images.load_image`
#: decodes them all (OpenCV).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")

__all__ = ["IMAGE_SUFFIXES"]
