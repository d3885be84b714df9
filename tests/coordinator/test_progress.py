"""The progress display: in a CI log (not a terminal) one line per finished job, naming the node and the counts."""
import io

from fleetbench.coordinator.run import Progress
from fleetbench.shared.job import Result


def _result(status, **kw):
    return Result(job_id="j", sweep="s", model="m", compression="fp16", backend="onnxruntime", device="cpu",
                  batch_size=1, node_id="abc123", hostname="vm", hw_kind="cpu", status=status, **kw)


def test_one_line_per_job_in_a_log():
    log = io.StringIO()
    bar = Progress(3, {"abc123": "edge-box"}, enabled=True, stream=log)
    bar.result(_result("ok", latency_p50_ms=1.23456))
    bar.result(_result("failed", stage="build", error="boom"))
    bar.result(_result("unsupported", error="no GPU"))
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "[1/3] edge-box: m/fp16/onnxruntime:cpu/bs1 ok p50 1.235 ms | ok 1, failed 0, unsupported 0"
    assert "failed (build: boom)" in lines[1] and lines[2].endswith("ok 1, failed 1, unsupported 1")
    assert "unsupported (no GPU) |" in lines[2]          # no stage: no empty one before the reason
    assert "\r" not in log.getvalue()


def test_disabled_prints_nothing():
    log = io.StringIO()
    bar = Progress(1, {}, enabled=False, stream=log)
    bar.result(_result("ok"))
    bar.close()
    assert log.getvalue() == "" and bar.counts["ok"] == 1
