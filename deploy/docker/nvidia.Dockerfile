# syntax=docker/dockerfile:1
# fleetbench node image, kind "nvidia": PyTorch (CUDA wheels), ONNX Runtime GPU, TensorRT, NVML.
#
# Build from the repository root (BuildKit reads nvidia.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/docker/nvidia.Dockerfile -t fleetbench-nvidia .
# Run (needs the NVIDIA driver and the NVIDIA Container Toolkit on the host; see deploy/README.md):
#   docker run -d --name fleetbench-node --gpus all --network host --shm-size=SIZE \
#     -v /var/cache/fleetbench:/var/cache/fleetbench \
#     -v "$HOME/.ray/auth_token:/run/secrets/ray_auth_token:ro" \
#     -e RAY_AUTH_TOKEN_PATH=/run/secrets/ray_auth_token \
#     fleetbench-nvidia --address HEAD:6379 --name gpu-box-1
#
# The CUDA user-space libraries that torch, onnxruntime-gpu and tensorrt load come mostly from
# their pip wheels; the base image adds the CUDA runtime and cuDNN system-wide, and its CUDA
# version sets the minimum host driver (NVIDIA_REQUIRE_CUDA). Pick a CUDA_IMAGE whose CUDA major
# matches those wheels' and that the fleet's driver supports.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# Optional: a PyTorch wheel index to take torch/torchvision from (e.g. a CUDA-specific index at
# https://download.pytorch.org/whl/); empty: the default wheels from PyPI.
ARG TORCH_INDEX_URL=
# Keep in step with the torch / torchvision pins in pyproject.toml.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 22.04 ships Python 3.11 as python3.11 (universe); the image's default python3 is 3.10.
# tini: PID 1 that forwards signals; wget: KubeRay's default health probes; procps: 'ray stop'.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        bash ca-certificates procps python3.11 python3.11-venv tini wget \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash fleet \
 && mkdir -p /var/cache/fleetbench \
 && chown fleet:fleet /var/cache/fleetbench

# KubeRay starts the container with 'bash -l', whose /etc/profile resets PATH (Debian does):
# profile.d puts the venv back in front (single quotes: $PATH expands at login, not here).
# hadolint ignore=SC2016
RUN python3.11 -m venv /opt/venv \
 && echo 'export PATH="/opt/venv/bin:$PATH"' > /etc/profile.d/fleetbench-venv.sh
ENV PATH=/opt/venv/bin:${PATH}

RUN pip install --upgrade pip \
 && if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --index-url "${TORCH_INDEX_URL}" \
            "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    fi

# pip extras of the fleetbench distribution; add ',tflite' for the LiteRT backend.
ARG FLEETBENCH_EXTRAS=nvidia
WORKDIR /opt/fleetbench
COPY . .
# No GPU at build time: check only that the packages are there, not that CUDA works.
RUN pip install ".[${FLEETBENCH_EXTRAS}]" \
 && for c in ray agent coordinator; do command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }; done \
 && python -c "import torch; assert torch.version.cuda, 'torch is a CPU-only build'" \
 && chmod 0755 deploy/start-node.sh

USER 1000:1000
ENV HOME=/home/fleet \
    FLEETBENCH_CACHE=/var/cache/fleetbench
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fleetbench/deploy/start-node.sh", "nvidia", "--block"]
