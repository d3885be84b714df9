"""Dispatch jobs as Ray tasks and stream their rows back as each finishes.

Each job is a streaming-generator task pinned to its node, in a fresh worker process
(`max_calls=1`), holding the node's one benchmark slot. It yields ("stage", name) as each stage
begins and ("result", Result) at the end, so when a worker dies the coordinator still knows the
stage. Every wait is bounded: a job that outlives its timeout is cancelled, and the jobs of a node
that left the cluster are failed, so each planned job ends with exactly one row.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import ray

from coordinator.cluster import alive_nodes, node_options
from shared.errors import one_line
from shared.job import Job, Result

log = logging.getLogger(__name__)
POLL_S = 0.5
LIVENESS_EVERY_S = 2.0


@ray.remote(max_calls=1, max_retries=0)
def agent_task(job: Job, weights: Optional[bytes]):
    """Runs in a fresh worker on the job's node: stage events, then the Result."""
    from agent.runner import run_job

    events: queue.Queue = queue.Queue()
    box: dict[str, Result] = {}

    def work() -> None:
        try:
            box["result"] = run_job(job, weights, on_stage=events.put)
        finally:
            events.put(None)

    threading.Thread(target=work, name="fleetbench-job", daemon=True).start()
    while (name := events.get()) is not None:
        yield ("stage", name)
    yield ("result", box["result"])


@dataclass
class _Running:
    job: Job
    stage: Optional[str] = None
    started: Optional[float] = None


def failed(job: Job, stage: Optional[str], error: str) -> Result:
    return Result.for_job(job, status="failed", stage=stage or "load", error=error)


class Dispatcher:
    """Submits jobs and calls `on_result` once per job, from the calling thread, as rows arrive."""

    def __init__(self, on_result: Callable[[Result], None],
                 on_stage: Optional[Callable[[Job, str], None]] = None):
        self.on_result = on_result
        self.on_stage = on_stage or (lambda job, name: None)
        self.running: dict = {}   # generator -> _Running

    def submit(self, jobs: list[Job], weights: dict[str, "ray.ObjectRef"]) -> None:
        nodes = {n["NodeID"]: n for n in alive_nodes()}
        for job in jobs:
            node = nodes.get(job.node_id)
            if node is None:
                self._finish(_Running(job), failed(job, None, f"node {job.node_key} left the cluster before the job started"))
                continue
            gen = agent_task.options(num_returns="streaming", **node_options(node)).remote(
                job, weights.get(job.model.name))
            self.running[gen] = _Running(job)

    def drain(self) -> None:
        """Wait for every submitted job; returns when each has given exactly one row."""
        last_check = time.monotonic()
        while self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
            for gen in ready:
                self._step(gen)
            if time.monotonic() - last_check >= LIVENESS_EVERY_S:
                self._check_timeouts_and_nodes()
                last_check = time.monotonic()

    def _step(self, gen) -> None:
        state = self.running[gen]
        try:
            kind, value = ray.get(next(gen))
        except StopIteration:
            self._finish(state, failed(state.job, state.stage, "agent ended without a result"), gen)
            return
        except Exception as e:  # the worker died (segfault, OOM kill) or the task errored in Ray
            what = "worker process died" if "died" in str(e).lower() or "crash" in type(e).__name__.lower() else "task failed"
            self._finish(state, failed(state.job, state.stage, f"{what}: {one_line(e)}"), gen)
            return
        if kind == "stage":
            state.stage = value
            state.started = state.started or time.monotonic()
            self.on_stage(state.job, value)
        else:
            self._finish(state, value, gen)

    def _finish(self, state: _Running, result: Result, gen=None) -> None:
        if gen is not None:
            self.running.pop(gen, None)
        self.on_result(result)

    def _check_timeouts_and_nodes(self) -> None:
        alive = {n["NodeID"] for n in alive_nodes()}
        now = time.monotonic()
        for gen, state in list(self.running.items()):
            job = state.job
            if job.node_id not in alive:
                error = f"node {job.node_key} left the cluster during the sweep (stage {state.stage or 'queued'})"
            elif state.started is not None and now - state.started > job.timeout_s:
                error = f"timed out after {job.timeout_s:g} s in stage {state.stage}"
            else:
                continue
            try:
                ray.cancel(gen, force=True)
            except Exception as e:  # already gone
                log.debug("cancel %s: %s", job.describe(), e)
            self._finish(state, failed(job, state.stage, error), gen)
