import time

import numpy as np
import pytest

from fleetbench.agent import measure
from fleetbench.agent.quality import batches, predict, quality
from fleetbench.agent.sizes import artifact_files, compressed_bytes, size_bytes
from fleetbench.shared.sweep import MeasureSpec


def test_summarize_uses_every_sample():
    s = measure.summarize([0.001, 0.002, 0.003, 0.004, 0.010])
    assert s.iterations == 5
    assert s.mean_ms == pytest.approx(4.0)
    assert s.p50_ms == pytest.approx(3.0)
    assert s.min_ms == pytest.approx(1.0)
    assert s.p99_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 99))
    assert s.std_ms == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert s.window_s == pytest.approx(0.020)
    assert s.throughput(8) == pytest.approx(8 * 5 / 0.020)
    with pytest.raises(ValueError):
        measure.summarize([])


class FakeClock:
    """A deterministic clock: each timed call advances it by `step` seconds."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        return self.t

    def work(self):
        self.t += self.step


def test_time_loop_meets_min_iters_and_duration():
    clock = FakeClock(0.01)
    calls = []
    spec = MeasureSpec(warmup_iters=3, min_iters=5, min_duration_s=0.2, max_duration_s=5)
    samples = measure.time_loop(lambda: (calls.append(1), clock.work()), spec, clock=clock)
    assert len(calls) == 3 + len(samples)
    assert len(samples) == 20            # 0.2 s of 10 ms calls, more than min_iters
    assert all(s == pytest.approx(0.01) for s in samples)


def test_time_loop_min_iters_dominates_for_slow_calls():
    clock = FakeClock(0.5)
    spec = MeasureSpec(warmup_iters=0, min_iters=7, min_duration_s=0.1, max_duration_s=100)
    assert len(measure.time_loop(clock.work, spec, clock=clock)) == 7


def test_time_loop_capped_by_max_duration():
    clock = FakeClock(1.0)
    spec = MeasureSpec(warmup_iters=0, min_iters=1000, min_duration_s=0, max_duration_s=3)
    assert len(measure.time_loop(clock.work, spec, clock=clock)) == 3


def test_peak_rss_sees_a_short_allocation():
    base = measure.rss_mb()
    assert measure.reset_peak()
    with measure.PeakRSS(interval_s=0.001) as mem:
        block = np.ones(200 * 2**20 // 8)   # 200 MB, touched
        del block
    assert mem.peak_mb - base > 150
    assert measure.rss_mb() - base < 100    # freed again: the peak is what remembers it


def test_sizes_count_every_file_and_compress(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x01" * 1000)
    (tmp_path / "model.onnx.data").write_bytes(np.random.default_rng(0).bytes(5000))
    sub = tmp_path / "ir"
    sub.mkdir()
    (sub / "a.bin").write_bytes(bytes(4000))
    files = [tmp_path / "model.onnx", tmp_path / "model.onnx.data", sub]
    assert size_bytes(files) == 10000
    assert len(artifact_files(files + [tmp_path / "model.onnx"])) == 3  # no double count
    c = compressed_bytes(files)
    assert 5000 < c < 5400    # random bytes do not compress; zeros and repeats do


def test_quality_metrics_and_agreement():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    q = quality(pred, labels, reference=np.array([0, 1, 1, 1, 2, 2]))
    assert q.accuracy == pytest.approx(4 / 6)
    assert q.top1_agreement == pytest.approx(5 / 6)
    # class 0: P=1/2 R=1/2; class 1: P=2/3 R=1; class 2: P=1 R=1/2
    assert q.precision_macro == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert q.recall_macro == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert quality(pred, None, pred).f1_macro is None


def test_batches_pad_the_last_batch_and_predict_drops_padding():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    got = list(batches(x, 4))
    assert [n for _, n in got] == [4, 4, 2] and all(b.shape == (4, 1) for b, _ in got)
    seen = []

    def run(b):
        assert b.shape[0] == 4
        seen.append(b.copy())
        return np.concatenate([b, -b], axis=1)   # argmax is 0 for x >= 0
    assert predict(run, x, 4).tolist() == [0] * 10


def test_the_rss_sampler_sleeps_through_a_timed_loop():
    """No PeakRSS wake-up inside a timed loop (it would preempt a sub-millisecond engine); it samples
    before and after, and the kernel's high-water mark covers the window."""
    from fleetbench.agent import measure
    spec = MeasureSpec(warmup_iters=0, min_iters=1, min_duration_s=0.3, max_duration_s=1.0)
    with measure.PeakRSS(interval_s=0.001) as mem:
        time.sleep(0.2)
        before = mem.samples
        measure.time_loop(lambda: None, spec)
        during = mem.samples - before
        time.sleep(0.2)
        after = mem.samples - before - during
    assert before > 0 and after > 0, (before, after)     # it does sample outside the loop
    assert during <= 2, during   # at most one already past its wait, and one as the loop ends (~300 unpaused)
