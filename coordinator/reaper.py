"""`python -m fleetbench.coordinator.reaper PID`: when process PID dies, kill what it started.

The embedded Ray cluster (gcs_server, raylet, its agents and workers) runs as children of the
coordinator. `ray.shutdown()` stops them on every normal or interrupted exit; when the coordinator
is killed outright (SIGKILL, the out-of-memory killer) they would outlive it for a minute or more.
This watcher, started beside the embedded cluster in a session of its own, keeps a list of the
coordinator's descendants and kills them within about a second of its death.
"""
from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.5


def main(argv: list[str]) -> int:
    import psutil
    parent = int(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is the coordinator's to handle
    me = os.getpid()
    known: dict[int, float] = {}
    while os.getppid() == parent:
        try:
            kids = psutil.Process(parent).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for kid in kids:
            if kid.pid != me and kid.pid not in known:
                try:
                    known[kid.pid] = kid.create_time()
                except psutil.NoSuchProcess:
                    pass
        time.sleep(POLL_S)
    for _ in range(5):   # a dying raylet can still start a worker: look again until nobody is left
        victims = _alive(known)
        if not victims:
            break
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    return 0


def _alive(known: dict[int, float]) -> list:
    """The known processes still running (the same ones: a reused pid has another start time) and their
    descendants; every one found is added to `known`."""
    import psutil
    out = []
    for pid, created in list(known.items()):
        try:
            p = psutil.Process(pid)
            if p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE:
                continue
            out.append(p)
            for kid in p.children(recursive=True):
                known.setdefault(kid.pid, kid.create_time())
                out.append(kid)
        except psutil.NoSuchProcess:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
