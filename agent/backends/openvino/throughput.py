"""OpenVINO's throughput driver: async infer requests (AsyncInferQueue) on a model compiled with the THROUGHPUT
performance hint, the way `benchmark_app -hint throughput` drives it.

The plugin picks its streams for the hint (or takes `measure.streams`); the driver keeps as many requests in
flight as the compiled model asks for (OPTIMAL_NUMBER_OF_INFER_REQUESTS, or `measure.streams`). Each request's
input tensor holds the batch, written once per window, and the main thread only hands idle requests back to
the queue: no Python callback runs in OpenVINO's worker threads (it would take the GIL on every completion).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from fleetbench.agent import measure, validity
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import MeasureSpec


def hint_config(job: Job) -> dict[str, str]:
    """The performance hint for the job's scenario: one stream, LATENCY; or THROUGHPUT with the plugin's own
    streams unless `measure.streams` pins them."""
    if job.scenario != "throughput":
        return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if job.measure.streams:
        config["NUM_STREAMS"] = str(job.measure.streams)
    return config


class AsyncDriver:
    """`requests` async infer requests of one compiled model, kept busy for a window."""

    def __init__(self, ov: Any, compiled: Any, requests: int):
        self.queue = ov.AsyncInferQueue(compiled, requests)
        self.requests = [self.queue[i] for i in range(requests)]
        self.streams = _property(compiled, "NUM_STREAMS")

    def note(self, pinned: bool) -> str:
        how = "measure.streams" if pinned else "OPTIMAL_NUMBER_OF_INFER_REQUESTS"
        streams = f"NUM_STREAMS {self.streams}" if self.streams is not None else "streams not reported"
        return (f"openvino throughput: PERFORMANCE_HINT THROUGHPUT, {streams}, {len(self.requests)} async infer "
                f"requests ({how}), each request's input written once per window")

    def window(self, x: np.ndarray, spec: MeasureSpec) -> validity.Window:
        for request in self.requests:
            request.get_input_tensor(0).data[...] = x
        return measure.driven_window(self.loop, spec, max(len(self.requests), spec.warmup_iters))

    def loop(self, spec: MeasureSpec) -> tuple[list[float], float]:
        """Start requests back to back until min_iters have completed and min_duration_s has passed (capped
        by max_duration_s), then wait for those in flight. Every started request is counted; latencies are
        OpenVINO's own per request (start to completion, queueing in the plugin included)."""
        queue, requests = self.queue, self.requests
        pending = [False] * len(requests)
        started: list[Optional[int]] = [None] * len(requests)
        latencies: list[float] = []
        count = 0
        start = time.perf_counter()
        while True:
            i = queue.get_idle_request_id()   # blocks until one is idle; start_async takes that same one
            if pending[i]:
                latencies.append(requests[i].latency / 1e3)
                pending[i] = False
            elapsed = time.perf_counter() - start
            if (len(latencies) >= spec.min_iters and elapsed >= spec.min_duration_s) or elapsed >= spec.max_duration_s:
                break
            queue.start_async(userdata=count)
            pending[i], started[i] = True, count
            count += 1
        queue.wait_all()
        wall = time.perf_counter() - start
        latencies += [requests[i].latency / 1e3 for i, p in enumerate(pending) if p]
        ran = list(queue.userdata)
        if any(s is not None and ran[i] != s for i, s in enumerate(started)):
            raise RuntimeError("AsyncInferQueue started other requests than it reported idle: latencies unmatched")
        return latencies, wall


def _property(compiled: Any, name: str) -> Optional[int]:
    try:
        return int(compiled.get_property(name))
    except Exception:   # a plugin that does not report it
        return None
