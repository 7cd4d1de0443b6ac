"""Install detectron2 (v0.6, pure-Python parts) into the running interpreter from PyPI, or build it as a wheel.

detectron2 publishes no wheels. PyPI carries a renamed v0.6 sdist (``pb1-detectron2``) whose C++/CUDA
sources are missing, so its ``setup.py`` cannot build as shipped. The modules a C4 Faster R-CNN needs
run on torchvision's ops, so we build it without the extension: drop ``ext_modules``, replace
``Image.LINEAR`` (removed in Pillow 10) with ``Image.BILINEAR``, and require only the runtime
dependencies our extractor imports. GPU workers that have a real detectron2 build keep theirs: this
script does nothing when ``import detectron2`` already works (unless ``--force``).

``--wheel-dir DIR`` builds ``DIR/pb1_detectron2-0.6-py3-none-any.whl`` instead of installing: Dataflow and Flink
workers install it with ``--extra_package`` (pip then installs its runtime dependencies there too); the worker
container (``Dockerfile``) installs it with this same script.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# What detectron2.{config,modeling,checkpoint,structures,layers} import at run time.
RUNTIME_DEPS = [
    "fvcore==0.1.5.post20221221",
    "iopath==0.1.9",
    "yacs==0.1.8",
    "termcolor",
    "tabulate",
    "cloudpickle",
    "omegaconf>=2.1",
    "pycocotools",
    "matplotlib",
]


_OPTIONAL_C = "try:\n    from detectron2 import _C\nexcept ImportError:  # no C++ extension\n    _C = None"


WHEEL_NAME = "pb1_detectron2-0.6-py3-none-any.whl"


def _pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def _download_sdist(dest: Path) -> Path:
    """Fetch the sdist through the package index (pip refuses it: an extra names a URL dependency)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = urllib.request.urlopen(f"{index}/pb1-detectron2/", timeout=60).read().decode()
    match = re.search(r'href="([^"]*' + re.escape(SDIST_NAME) + r'[^"]*)"', page)
    if match is None:
        raise SystemExit(f"{SDIST_NAME} not listed at {index}/pb1-detectron2/")
    url = urllib.parse.urljoin(f"{index}/pb1-detectron2/", match.group(1).replace("&amp;", "&"))
    data = urllib.request.urlopen(url, timeout=120).read()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise SystemExit(f"{SDIST_NAME}: sha256 mismatch, refusing to install it")
    archive = dest / SDIST_NAME
    archive.write_bytes(data)
    return archive


def _patch(src: Path) -> None:
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    text = text.replace("ext_modules=get_extensions(),", "")
    text = text.replace('cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', "")
    # Its install_requires pins black==21.4b2, tensorboard, hydra...: none is needed to run a model. Its extras
    # name a URL dependency, which pip refuses from an index: a worker installing the wheel needs neither.
    text, n = re.subn(r"install_requires=\[.*?\n    \],\n    extras_require=\{.*?\n    \},\n",
                      f"install_requires={RUNTIME_DEPS!r},\n", text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{setup_py}: install_requires/extras_require not found where expected")
    setup_py.write_text(text)
    for py in (src / "detectron2").rglob("*.py"):
        code = py.read_text()
        patched = code.replace("Image.LINEAR", "Image.BILINEAR")
        # Modules that import the absent extension at the top keep importing; only their ops fail.
        patched = re.sub(r"^from detectron2 import _C$", _OPTIONAL_C, patched, flags=re.M)
        if patched != code:
            py.write_text(patched)


def _patched_sources(tmp: Path) -> Path:
    with tarfile.open(_download_sdist(tmp)) as tar:
        tar.extractall(tmp, filter="data")
    src = next(p for p in tmp.iterdir() if p.is_dir())
    _patch(src)
    return src


def build_wheel(wheel_dir: Path) -> Path:
    """The patched sources as a pure-Python wheel (no extension, so one wheel fits every Linux worker)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # setup.py imports torch (for the extension it no longer builds): build with this interpreter's packages
        _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheel_dir),
             str(_patched_sources(Path(tmp))))
    wheel = wheel_dir / WHEEL_NAME
    if not wheel.is_file():
        raise SystemExit(f"pip wheel did not write {wheel}")
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    parser.add_argument("--wheel-dir", type=Path, help="build the wheel into this directory instead of installing")
    args = parser.parse_args()
    if args.wheel_dir is not None:
        print(build_wheel(args.wheel_dir))
        return 0
    if importlib.util.find_spec("detectron2") is not None and not args.force:
        print("detectron2 already importable; nothing to do")
        return 0
    _pip("install", "--quiet", *RUNTIME_DEPS)
    with tempfile.TemporaryDirectory() as tmp:
        _pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(_patched_sources(Path(tmp))))
    subprocess.check_call([sys.executable, "-c", "import detectron2.modeling, detectron2.checkpoint"])
    print("detectron2 installed (pure Python, no C++ extension)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
