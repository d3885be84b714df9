"""Threads and CPU limits come from what the process may use (affinity mask, cgroup CPU quota), not the host."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fleetbench.agent import limits

# What a job would use by default (agent/stages.py), and the limits it would record.
PROBE = ("import json; from fleetbench.agent import limits; from fleetbench.agent.stages import default_threads; "
         "l = limits.cpu_limits(); assert default_threads() == l.threads; "
         "print(json.dumps([l.affinity_list, l.quota, l.threads, l.usable, l.cores]))")
CPU_V1 = Path("/sys/fs/cgroup/cpu")


def _probe(prefix=(), env=None):
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def test_cpu_list_is_written_as_the_kernel_writes_it():
    assert limits.cpu_list([8, 0, 1, 2, 3]) == "0-3,8"
    assert limits.cpu_list([0]) == "0" and limits.cpu_list([1, 3, 5]) == "1,3,5"


def test_a_process_under_taskset_one_cpu_gets_one_thread_and_records_it():
    if not shutil.which("taskset"):
        pytest.skip("taskset is not installed")
    cpu = min(os.sched_getaffinity(0))
    affinity, _, threads, usable, cores = _probe(["taskset", "-c", str(cpu)])
    assert (affinity, threads, usable, cores) == (str(cpu), 1, 1, 1)


def _fake_proc(tmp_path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_v2_cpu_max_of_the_group_and_its_parents_the_tightest_wins(tmp_path):
    root = tmp_path / "cg2"
    (root / "pod" / "ctr").mkdir(parents=True)
    (root / "pod" / "cpu.max").write_text("800000 100000\n")      # the pod: 8 CPUs
    (root / "pod" / "ctr" / "cpu.max").write_text("max 100000\n")  # the container: no quota of its own
    proc = _fake_proc(tmp_path, "0::/pod/ctr\n", f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw\n")
    assert limits.cgroup_quota(proc) == 8.0
    (root / "pod" / "ctr" / "cpu.max").write_text("150000 100000\n")
    assert limits.cgroup_quota(proc) == 1.5
    assert limits.CpuLimits(tuple(range(32)), 32, 1.5).threads == 1
    assert limits.CpuLimits(tuple(range(32)), 16, 8.0).threads == 8
    assert limits.CpuLimits(tuple(range(32)), 16, None).threads == 16


def test_v1_quota_seen_through_a_container_mount_root(tmp_path):
    """Inside a container the v1 hierarchy is mounted from the container's own group (mountinfo's root)."""
    point = tmp_path / "cpu,cpuacct"
    (point / "job").mkdir(parents=True)
    (point / "cpu.cfs_quota_us").write_text("-1\n")
    (point / "cpu.cfs_period_us").write_text("100000\n")
    (point / "job" / "cpu.cfs_quota_us").write_text("50000\n")
    (point / "job" / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo = f"40 31 0:37 /docker/abc {point} rw - cgroup cgroup rw,cpu,cpuacct\n"
    proc = _fake_proc(tmp_path, "3:cpu,cpuacct:/docker/abc/job\n", mountinfo)
    assert limits.cgroup_quota(proc) == 0.5
    (tmp_path / "x").mkdir()
    elsewhere = _fake_proc(tmp_path / "x", "3:cpu,cpuacct:/other\n", mountinfo)
    assert limits.cgroup_quota(elsewhere) is None   # a group this mount does not show: no figure, no crash


@contextlib.contextmanager
def _v1_cpu_group(quota_us: int, period_us: int = 100_000):
    """A child of the v1 `cpu` hierarchy with a quota; removed after (its processes must have exited)."""
    if os.geteuid() != 0 or not (CPU_V1 / "cpu.cfs_quota_us").exists() or not os.access(CPU_V1, os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    group = CPU_V1 / f"fleetbench-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(period_us))
        (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        yield group
    finally:
        group.rmdir()


def test_a_process_in_a_cgroup_with_a_quota_gets_its_threads_capped():
    with _v1_cpu_group(50_000) as group:   # half a CPU
        out = subprocess.run(["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1"',
                              sys.executable, PROBE], capture_output=True, text=True, check=True)
    affinity, quota, threads, usable, _ = json.loads(out.stdout)
    assert quota == 0.5 and threads == 1 and usable == 1
    assert affinity == limits.cpu_list(os.sched_getaffinity(0))
