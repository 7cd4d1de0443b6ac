# Worker image for Dataflow and Flink (--sdk_container_image): Beam's Python 3.11 SDK harness with torch, the
# project and detectron2. Build from the repository root and push where the workers pull from:
#     docker build -t REGISTRY/ldot-worker:0.1.0 . && docker push REGISTRY/ldot-worker:0.1.0
# The base image's entrypoint (Beam's boot) is kept: it is what the runner starts on every worker.
FROM apache/beam_python3.11_sdk:2.77.0

# torch first, in its own layer (large; cached while the project changes). These are the pins of setup.py; on x86_64
# this build carries CUDA and runs on CPU and GPU workers alike (the host provides the NVIDIA driver).
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/ldot
COPY . .
# the project (same pins as setup.py), then detectron2 with the installer the launcher machines use
RUN pip install --no-cache-dir . \
    && python scripts/install_detectron2.py \
    && cd / && python -c "import detectron2.modeling, encoders.regions.modeling, transforms.regions"
