"""scripts/gpu-check.sh can fail: exit 2 where no NVIDIA GPU is listed (a FAKE nvidia-smi that lists none),
exit 1 when a row expected to be ok on an NVIDIA node is not (checked on real DuckDB files)."""
import itertools
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"
EXPECTED = [("pytorch", "cuda", "none"), ("pytorch", "cuda", "fp16"), ("torchscript", "cuda", "none"),
            ("torchscript", "cuda", "fp16"), ("onnxruntime", "cuda", "none"), ("onnxruntime", "cuda", "fp16"),
            ("onnxruntime", "tensorrt-ep", "none"), ("onnxruntime", "tensorrt-ep", "fp16"),
            ("onnxruntime", "tensorrt-ep", "int8-static"), ("tensorrt", "cuda", "none"), ("tensorrt", "cuda", "fp16"),
            ("tensorrt", "cuda", "int8-static")]


def run(*args, path_prefix=None):
    env = {**os.environ, "PYTHON": sys.executable}
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_gpu_check_fake_nvidia_smi_without_gpus_exits_2_in_one_line(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    fake.chmod(0o755)
    r = run(path_prefix=tmp_path)
    assert r.returncode == 2
    assert r.stdout.strip().splitlines() == ["gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none)"]


def results_db(path, rows):
    """A results file as the coordinator writes it (fleetbench's own schema), with these rows."""
    from fleetbench.coordinator.store import Store
    from fleetbench.shared.job import Result
    with Store(path) as store:
        run_id = store.start_run("gpu-check", "{}", None)
        for i, (backend, device, compression, bs, status, error, device_ms) in enumerate(rows):
            store.put_result(Result(job_id=f"job{i}", sweep="gpu-check", model="digits", compression=compression,
                                    backend=backend, device=device, batch_size=bs, status=status, error=error,
                                    latency_device_p50_ms=device_ms, run_id=run_id, node_id="n" * 40,
                                    hostname="gpu-node", hw_kind="nvidia"))
    return path


@pytest.mark.parametrize("broken, code", [(None, 0), ("failed", 1), ("unsupported", 1), ("missing", 1)])
def test_gpu_check_fails_when_an_expected_ok_row_is_not(tmp_path, broken, code):
    rows = [(b, d, c, bs, "ok", None, 0.5) for (b, d, c), bs in itertools.product(EXPECTED, (1, 8))]
    if broken == "missing":
        rows = rows[1:]
    elif broken:
        rows[0] = rows[0][:4] + (broken, "why it broke", None)
    r = run("--check-db", str(results_db(tmp_path / "r.duckdb", rows)))
    assert r.returncode == code, r.stdout + r.stderr
    if broken:
        assert f"pytorch,cuda,none,1,{broken}" in r.stdout
