"""What this node is and can do. Never raises for missing hardware or libraries."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from typing import Optional

from fleetbench.agent import backends
from fleetbench.agent.gpu import nvidia_gpus
from fleetbench.shared.job import NodeProfile
from fleetbench.shared.vocab import BackendName

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")
PACKAGES = ("fleetbench", "torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
            "tensorrt", "ai-edge-litert", "litert-torch", "ray", "duckdb", "numpy", "nvidia-ml-py")


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and the ISA flags that matter for inference kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model, [f for f in ISA_FLAGS if f in flags]


def host_id(label: Optional[str] = None) -> str:
    """The machine this node runs on: the `fleet.host` label where given, else its machine-id
    (systemd, dbus), else the hostname.

    Two Ray nodes on one machine (a GPU box's CPU and NVIDIA nodes, a test fleet) get the same id,
    unlike their Ray node ids. Containers built from one image may share a machine-id without
    sharing a machine, or see none: give such nodes a `fleet.host` label (`ray start --labels`).
    """
    if label:
        return label
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return "hostname:" + socket.gethostname()


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def detect_kinds(cpu_model: str, gpus: list, label: Optional[str]) -> list[str]:
    """cpu always; nvidia with an NVIDIA GPU; intel on an Intel CPU. A `fleet.kind` label adds kinds.

    deploy/start-node.sh writes several kinds joined by '-' (`cpu-intel`: Ray label values cannot
    hold ',' or '+'); ',' and '+' are accepted too, for labels set by hand.
    """
    kinds = ["cpu"]
    if gpus:
        kinds.append("nvidia")
    if "intel" in cpu_model.lower():
        kinds.append("intel")
    for k in (label or "").replace("+", ",").replace("-", ",").split(","):
        if k.strip() and k.strip() not in kinds:
            kinds.append(k.strip())
    return kinds


def probe(labels: Optional[dict[str, str]] = None) -> NodeProfile:
    import psutil
    labels = dict(labels or {})
    cpu_model, flags = cpu_info()
    gpus, driver, _ = nvidia_gpus()
    backend_info = {}
    for name in backends.names():
        try:
            backend_info[name] = backends.get(name).probe().as_dict()
        except Exception as e:  # a broken install must not break the probe
            backend_info[name] = {"available": False, "reason": f"{name}: {type(e).__name__}: {e}", "devices": []}
    ov = backend_info.get(BackendName.OPENVINO, {})
    hostname = socket.gethostname()
    return NodeProfile(
        hostname=hostname, kinds=detect_kinds(cpu_model, gpus, labels.get("fleet.kind")),
        cpu_model=cpu_model, cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cpus=os.cpu_count() or 1, isa_flags=flags, ram_mb=psutil.virtual_memory().total / 2**20,
        node_key=labels.get("fleet.node") or hostname, host_id=host_id(labels.get("fleet.host")),
        labels=labels, gpus=gpus, driver=driver,
        openvino_devices=list(ov.get("devices") or []), versions=versions(), backends=backend_info)
