"""A test-only engine that does no real work: each call sleeps a fixed time.

Used by bench/ to measure what the coordinator adds per job. FLEETBENCH_NULL_MS sets the sleep (default 1 ms).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import methods_at


class NullBackend(Backend):
    name = "null"
    precisions = {m: Unsupported("null: computes nothing, so it has no precision variants")
                  for m in methods_at("precision")}
    needs_model = False
    cacheable = False   # engine cache: nothing worth keeping

    def probe(self) -> Availability:
        return Availability(True, devices=("cpu",))

    def check(self, job: Job) -> Optional[str]:
        return None

    def export(self, ctx: ExportContext) -> Artifact:
        path = ctx.workdir / "null.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1024)
        return Artifact([path], dtype="fp32")

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        delay = float(os.environ.get("FLEETBENCH_NULL_MS", "1")) / 1e3
        shape = (job.batch_size, job.model.num_classes)

        def run(x: np.ndarray) -> np.ndarray:
            time.sleep(delay)
            return np.zeros(shape, dtype=np.float32)

        return Engine(run=run, dtype="fp32", threads=threads, provider="null")
