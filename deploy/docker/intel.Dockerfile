# syntax=docker/dockerfile:1
# fleetbench node image, kind "intel": OpenVINO + NNCF and the CPU engines (ONNX Runtime),
# PyTorch from the CPU-only wheels.
#
# Build from the repository root (BuildKit reads intel.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/docker/intel.Dockerfile -t fleetbench-intel .
#   (add --build-arg INTEL_GPU_RUNTIME=1 for OpenVINO's GPU device on an Intel iGPU/Arc; see below)
# Run (see deploy/README.md):
#   docker run -d --name fleetbench-node --network host --shm-size=SIZE \
#     -v /var/cache/fleetbench:/var/cache/fleetbench \
#     -v "$HOME/.ray/auth_token:/run/secrets/ray_auth_token:ro" \
#     -e RAY_AUTH_TOKEN_PATH=/run/secrets/ray_auth_token \
#     fleetbench-intel --address HEAD:6379 --name intel-box-1
# For an Intel GPU also pass: --device /dev/dri --group-add "$(getent group render | cut -d: -f3)"

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# Keep in step with the torch / torchvision pins in pyproject.toml.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# 1: install Debian's OpenCL runtime for Intel GPUs (intel-opencl-icd), which OpenVINO's GPU
# plugin needs. Off by default: a CPU-only Intel box does not need it.
ARG INTEL_GPU_RUNTIME=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# bash: start-node.sh; tini: PID 1 that forwards signals; wget: KubeRay's default health probes;
# procps: ps for 'ray stop'; libgomp1: OpenMP runtime for the CPU engines.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates libgomp1 procps tini wget \
 && if [ "${INTEL_GPU_RUNTIME}" = "1" ]; then \
        apt-get install -y --no-install-recommends ocl-icd-libopencl1 intel-opencl-icd; \
    fi \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash fleet \
 && mkdir -p /var/cache/fleetbench \
 && chown fleet:fleet /var/cache/fleetbench

# KubeRay starts the container with 'bash -l', whose /etc/profile resets PATH (Debian does):
# profile.d puts the venv back in front (single quotes: $PATH expands at login, not here).
# hadolint ignore=SC2016
RUN python -m venv /opt/venv \
 && echo 'export PATH="/opt/venv/bin:$PATH"' > /etc/profile.d/fleetbench-venv.sh
ENV PATH=/opt/venv/bin:${PATH}

# CPU-only torch first (the default PyPI wheel pulls in CUDA libraries an Intel node never uses);
# 'pip install .[intel,cpu]' then finds torch satisfied.
RUN pip install --upgrade pip \
 && pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# pip extras of the fleetbench distribution; add ',tflite' for the LiteRT backend.
ARG FLEETBENCH_EXTRAS=intel,cpu
WORKDIR /opt/fleetbench
COPY . .
RUN pip install ".[${FLEETBENCH_EXTRAS}]" \
 && for c in ray agent coordinator; do command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }; done \
 && python -c "import openvino, torch; assert not torch.version.cuda, torch.version.cuda" \
 && chmod 0755 deploy/start-node.sh

USER 1000:1000
ENV HOME=/home/fleet \
    FLEETBENCH_CACHE=/var/cache/fleetbench
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fleetbench/deploy/start-node.sh", "intel", "--block"]
