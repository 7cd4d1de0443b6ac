"""Bottom-up-attention region features (the inputs of LightningDOT's image tower).

``Regions`` (numpy only) always imports. ``RegionExtractor`` needs detectron2 and is imported on first
access, so the rest of the project (pre-extracted features -> encode -> index) runs without detectron2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from encoders.regions.types import Regions, normalize_boxes

if TYPE_CHECKING:  # pragma: no cover
    from encoders.regions.extractor import RegionExtractor

__all__ = ["RegionExtractor", "Regions", "detectron2_available", "normalize_boxes"]

INSTALL_HINT = (
    "region extraction needs detectron2, which is not installed. Install it with "
    "`python scripts/install_detectron2.py` (pure-Python build, enough for CPU and GPU inference), "
    "or build detectron2 from source on GPU workers "
    "(`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`). "
    "Pre-extracted features (--regions) need no detectron2."
)


def detectron2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("detectron2") is not None


def __getattr__(name: str) -> Any:
    if name == "RegionExtractor":
        if not detectron2_available():
            raise ImportError(INSTALL_HINT)
        try:
            from encoders.regions.extractor import RegionExtractor
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] == "detectron2":
                raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
            raise
        return RegionExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
