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
    victims = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:   # the same process, not a reused pid
                victims.append(p)
                victims.extend(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
