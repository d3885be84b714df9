"""Dispatch jobs as Ray tasks and stream their rows back as each finishes.

Each job is a streaming-generator task pinned to its node, holding the node's one benchmark slot; the
worker only supervises (the job runs in a process of its own, agent/supervise.py), so a worker serves
job after job (`max_calls=0`, also for GPU jobs, whose default would be one) and keeps its warm launcher
of job processes. It yields ("stage", name) as each stage
begins and ("result", Result) at the end, so when a worker dies the coordinator still knows the
stage.

The coordinator keeps its own queue per node and hands Ray at most `IN_FLIGHT_PER_NODE` jobs of a
node at a time (one running, the next waiting for the slot so it starts without a round trip).
So Ray holds a few tasks, not the whole sweep, and the jobs of a node that leaves are failed here.

Every wait is bounded: the agent kills a job (its whole process tree) at its timeout and reports it;
should the agent itself hang, the coordinator cancels the task `TIMEOUT_GRACE_S` later (counted
from when the job had its node to itself), and the jobs of a node that left the cluster are failed, so each planned job
ends with exactly one row. A job is never retried on another node: its job_id names its node, and
another machine is other hardware (docs/fleet.md).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Optional

import ray
from ray.exceptions import NodeDiedError, TaskUnschedulableError

from fleetbench.coordinator.cluster import alive_nodes, node_options
from fleetbench.coordinator.trust import accept
from fleetbench.shared.errors import STAGES, ClusterError, one_line
from fleetbench.shared.job import STARTUP_S, Job, Result

log = logging.getLogger(__name__)
POLL_S = 0.5
LIVENESS_EVERY_S = 2.0
IN_FLIGHT_PER_NODE = 2
TIMEOUT_GRACE_S = 45.0   # the agent's own timeout comes first; this is for an agent that hangs
# A hard-pinned task fails with one of these when its node is gone (the second also if it never fits there).
NODE_GONE = (NodeDiedError, TaskUnschedulableError)


@ray.remote(max_calls=0, max_retries=0)
def agent_task(job: Job, weights: Optional[bytes]):
    """Runs in a worker on the job's node, the job in a child process it watches
    (agent/supervise.py): stage events, a log for a failed job, then the Result."""
    from fleetbench.agent.supervise import supervise
    yield from supervise(job, weights)


@dataclass
class _Running:
    job: Job
    clock: Optional[float] = None     # when it had its node to itself: its timeout counts from here
    stage: Optional[str] = None
    started: Optional[float] = None                        # first stage event: the worker is up
    log: Optional[dict] = None                             # the agent's log of a failed job


class HeadLost(ClusterError):
    """The cluster's head (its GCS) stopped answering: nothing more can be dispatched or received."""


HEAD_CHECK_TIMEOUT_S = 3.0


def check_head(gcs: Optional[str]) -> None:
    """Raise HeadLost when the GCS at `gcs` (HOST:PORT) takes no TCP connection. Ray itself would retry
    for 60 s and then end this process without a word; this check comes every LIVENESS_EVERY_S."""
    import socket
    if not gcs:
        return
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=HEAD_CHECK_TIMEOUT_S).close()
    except OSError as e:
        raise HeadLost(f"the cluster's head ({gcs}) does not answer ({e.strerror or type(e).__name__}): it "
                       "stopped, restarted or is cut off; the jobs in flight are lost") from None


def failed(job: Job, stage: Optional[str], error: str) -> Result:
    return Result.for_job(job, status="failed", stage=stage or "load", error=error)


def never_started(job: Job, error: str) -> Result:
    """A job that never reached a stage: failed, with no stage."""
    return Result.for_job(job, status="failed", stage=None, error=error)


class Dispatcher:
    """Submits jobs and calls `on_result` once per job, from the calling thread, as rows arrive."""

    def __init__(self, on_result: Callable[[Result], None],
                 on_stage: Optional[Callable[[Job, str], None]] = None,
                 in_flight_per_node: int = IN_FLIGHT_PER_NODE,
                 on_log: Optional[Callable[[Result, dict], None]] = None):
        self.on_result = on_result
        self.on_log = on_log or (lambda row, log: None)
        self.on_stage = on_stage or (lambda job, name: None)
        self.per_node = max(1, in_flight_per_node)
        self.running: dict = {}                                  # generator -> _Running
        self.pending: dict[str, deque] = defaultdict(deque)      # node_id -> jobs not yet handed to Ray
        self.in_flight: Counter = Counter()                      # node_id -> generators in self.running
        self.gone: dict[str, str] = {}                           # node_id -> node_key of a node that left
        self.host_of: dict[str, str] = {}                        # node_id -> host_id (machine-id)
        self.nodes: dict[str, dict] = {}
        self.weights: dict[str, "ray.ObjectRef"] = {}
        self.gcs: Optional[str] = ray.get_runtime_context().gcs_address if ray.is_initialized() else None

    def submit(self, jobs: list[Job], weights: dict[str, "ray.ObjectRef"]) -> None:
        self.weights.update(weights)
        self.nodes.update({n["NodeID"]: n for n in alive_nodes()})
        for job in jobs:
            self.pending[job.node_id].append(job)
            if job.host_id:
                self.host_of.setdefault(job.node_id, job.host_id)
        for node_id in list(self.pending):
            self._fill(node_id)

    def drain(self) -> None:
        """Wait for every submitted job; returns when each has given exactly one row."""
        last_check = time.monotonic()
        while self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
            for gen in ready:
                if gen in self.running:   # a node's loss may have finished it meanwhile
                    self._step(gen)
            if time.monotonic() - last_check >= LIVENESS_EVERY_S:
                self._check_nodes_and_timeouts()
                last_check = time.monotonic()

    # -- per node queues ---------------------------------------------------------------------

    def host_mates(self, node_id: str) -> list[str]:
        """The other nodes on this node's machine, in turn after it (each node's slot is its own, so
        nodes sharing a machine must take turns here: one timed job per machine at a time)."""
        host = self.host_of.get(node_id)
        if not host:
            return []
        same = sorted(n for n, h in self.host_of.items() if h == host)
        i = same.index(node_id)
        return same[i + 1:] + same[:i]

    def _fill(self, node_id: str) -> None:
        """Hand Ray the node's next jobs, up to the in-flight limit (1, and only while no other node
        of its machine has one, where nodes share a machine)."""
        jobs = self.pending.get(node_id)
        if jobs and (node_id in self.gone or node_id not in self.nodes):
            self._node_gone(node_id, jobs[0].node_key)
            return
        mates = self.host_mates(node_id)
        if any(self.in_flight[m] for m in mates):
            return
        limit = 1 if mates else self.per_node
        while jobs and self.in_flight[node_id] < limit:
            job = jobs.popleft()
            gen = agent_task.options(num_returns="streaming", **node_options(self.nodes[node_id])).remote(
                job, self.weights.get(job.model.name))
            alone = self.in_flight[node_id] == 0
            self.running[gen] = _Running(job, clock=time.monotonic() if alone else None)
            self.in_flight[node_id] += 1
        if jobs is not None and not jobs:
            self.pending.pop(node_id, None)

    def _finish(self, gen, result: Result) -> None:
        state = self.running.pop(gen)
        node_id = state.job.node_id
        self.in_flight[node_id] -= 1
        now = time.monotonic()
        for other in self.running.values():   # the next job has the node now: its clock starts
            if other.job.node_id == node_id and other.clock is None:
                other.clock = now
                break
        self.on_result(result)
        if result.status == "failed":
            self.on_log(result, state.log or {"reason": result.error})
        for mate in self.host_mates(node_id):   # the machine's other nodes take their turn first
            self._fill(mate)
        self._fill(node_id)

    # -- events --------------------------------------------------------------------------------

    def _step(self, gen) -> None:
        state = self.running[gen]
        try:
            kind, value = ray.get(next(gen))
        except StopIteration:
            self._finish(gen, failed(state.job, state.stage, "agent ended without a result"))
            return
        except NODE_GONE as e:
            node_id = state.job.node_id
            if isinstance(e, NodeDiedError) or node_id not in {n["NodeID"] for n in alive_nodes()}:
                self._node_gone(node_id, state.job.node_key)
            else:   # unschedulable on a node that is still there
                self._finish(gen, never_started(state.job, f"task failed: {one_line(e)}"))
            return
        except Exception as e:  # the worker died (segfault, OOM kill) or the task errored in Ray
            state.log = {"reason": _why(e), "traceback": str(e)[:20000]}
            self._finish(gen, failed(state.job, state.stage, _why(e)))
            return
        if kind == "log":
            state.log = value if isinstance(value, dict) else {"reason": str(value)[:20000]}
        elif kind == "stage" and value in STAGES:
            state.stage = value
            state.started = state.started or time.monotonic()
            self.on_stage(state.job, value)
        else:   # identity from the job sent, measurements checked (coordinator/trust.py)
            self._finish(gen, accept(state.job, value))

    def _node_gone(self, node_id: str, node_key: str) -> None:
        """Fail every unfinished job of a node that left: running ones with their stage, queued ones without."""
        if node_id not in self.gone:
            log.warning("node %s (%s) left the cluster; its unfinished jobs fail", node_key, node_id[:12])
        self.gone[node_id] = node_key
        for job in self.pending.pop(node_id, ()):
            self.on_result(never_started(job, f"node {node_key} left the cluster before the job started"))
        for gen in [g for g, s in self.running.items() if s.job.node_id == node_id]:
            state = self.running[gen]
            _cancel(gen, state.job)
            if state.started is None:
                row = never_started(state.job, f"node {node_key} left the cluster before the job started")
            else:
                row = failed(state.job, state.stage,
                             f"node {node_key} left the cluster during the sweep (in stage {state.stage})")
            self._finish(gen, row)

    def _check_nodes_and_timeouts(self) -> None:
        check_head(self.gcs)
        alive = {n["NodeID"] for n in alive_nodes()}
        for node_id in {s.job.node_id for s in self.running.values()} - alive:
            key = next(s.job.node_key for s in self.running.values() if s.job.node_id == node_id)
            self._node_gone(node_id, key)
        for node_id in set(self.pending) - alive:
            if self.pending.get(node_id):
                self._node_gone(node_id, self.pending[node_id][0].node_key)
        now = time.monotonic()
        for gen, state in list(self.running.items()):
            job = state.job
            since = state.started or state.clock
            allowed = job.timeout_s if state.started else STARTUP_S   # the agent's own bounds (agent/supervise.py)
            if since is None or now - since <= allowed + TIMEOUT_GRACE_S:   # None: waiting behind another job
                continue
            _cancel(gen, job)
            if state.started is None:
                self._finish(gen, never_started(job, f"the job's worker did not start within {STARTUP_S:g} s"))
            else:
                self._finish(gen, failed(job, state.stage, f"timed out after {job.timeout_s:g} s in stage {state.stage}"))


    def cancel_all(self) -> int:
        """Cancel every job handed to Ray and forget the queued ones (an interrupted sweep); how many ran."""
        running = list(self.running.items())
        for gen, state in running:
            _cancel(gen, state.job)
        self.running.clear()
        self.pending.clear()
        return len(running)


def _cancel(gen, job: Job) -> None:
    try:
        ray.cancel(gen, force=True)
    except Exception as e:  # already gone
        log.debug("cancel %s: %s", job.describe(), e)


def _why(e: Exception) -> str:
    """One line for a task that ended without its row."""
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError
    if isinstance(e, OutOfMemoryError):
        return f"worker killed for lack of memory: {one_line(e, 300)}"
    if isinstance(e, WorkerCrashedError) or "died" in str(e).lower():
        return f"worker process died (segfault, kill or out-of-memory): {one_line(e, 300)}"
    return f"task failed: {one_line(e)}"
