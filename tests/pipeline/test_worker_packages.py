"""What workers install: the detectron2 wheel (for ``--extra_package``) and the container image definition (for
``--sdk_container_image``), both from the same install script and the pins of setup.py."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import install_detectron2  # noqa: E402  (a script, not a package)


def setup_pins() -> dict[str, str]:
    """name -> version of every ``name==version`` in setup.py's install_requires, and python_requires."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    pins = dict(ast.literal_eval(r).split("==") for r in kwargs["install_requires"].elts)
    pins["python"] = ast.literal_eval(kwargs["python_requires"])
    return pins


def test_dockerfile_uses_the_pins_of_setup_py_and_the_install_script():
    pins = setup_pins()
    assert pins["python"] == ">=3.11,<3.12"
    docker = (REPO / "Dockerfile").read_text()
    instructions = [line for line in docker.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == f"FROM apache/beam_python3.11_sdk:{pins['apache-beam']}"
    assert re.search(rf"pip install [^\n]*torch=={re.escape(pins['torch'])} torchvision=="
                     rf"{re.escape(pins['torchvision'])}\n", docker)
    assert "pip install --no-cache-dir ." in docker and "python scripts/install_detectron2.py" in docker
    assert "ENTRYPOINT" not in docker  # Beam's boot stays the entrypoint: the runner starts it on every worker
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "out"} <= set(ignored)


@pytest.mark.slow
def test_detectron2_wheel_installs_into_a_fresh_venv_and_runs_the_extractor(tmp_path):
    """Built from PyPI's sdist like a launcher would, installed into a venv that has nothing else, imported there.

    The venv borrows its dependencies (torch, fvcore, ...) from this environment through a .pth file appended after
    its own site-packages, so the detectron2 that runs is the wheel's (checked by path); the dependencies a worker's
    pip would install are checked in the wheel's metadata, not downloaded here."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "install_detectron2.py"), "--wheel-dir",
                    str(tmp_path / "wheels")], check=True, capture_output=True, timeout=600)
    wheel = tmp_path / "wheels" / install_detectron2.WHEEL_NAME
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read("pb1_detectron2-0.6.dist-info/METADATA").decode()
        assert not any(n.endswith((".so", ".pyd")) for n in z.namelist())  # pure Python: one wheel for all workers
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.M)
    assert requires == install_detectron2.RUNTIME_DEPS  # what pip installs on a worker; no URL, no extras

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check = (
        "import detectron2, detectron2.modeling as m, numpy as np\n"
        "from encoders.regions import RegionExtractor\n"
        "from encoders.regions.config_files import TINY_CONFIG\n"
        "assert 'ButdRCNN' in m.META_ARCH_REGISTRY, 'our model is not registered'\n"
        "image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype('uint8')\n"
        "(regions,) = RegionExtractor.from_config(TINY_CONFIG).extract([image])\n"
        "print(detectron2.__file__, regions.num_boxes)\n")
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    where, boxes = done.stdout.split()
    assert where.startswith(str(site)) and int(boxes) > 0
