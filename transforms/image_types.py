"""The images the pipeline takes: by file name when listing, by content when decoding.

Pillow identifies a file from its bytes, not its name, and opens some 40 formats, a few of them through outside
programs (EPS through Ghostscript). Decoding is limited to the formats these extensions name, so an EPS named
``.jpg`` is "not an image" rather than a Ghostscript run on the worker. (Multi-picture JPEGs open as JPEG.)
"""

from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # Image.open(..., formats=PIL_FORMATS)
