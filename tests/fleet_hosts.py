"""A fleet of hosts on this machine for tests: deploy/test-fleet.sh driven from Python.

Each host is a network namespace with its own address on a private bridge (a 10.213.N.0/24, inside
namespaces this fleet made only), its own HOME, Ray temp folder and engine cache, and one CPU (a cgroup
cpuset and CPU quota where the machine allows, else taskset). `head` and `w1`.. are Ray nodes started
with deploy/start-node.sh as the deploy guide says, with the token; `coord` is a host that is no node.

    fleet = HostFleet.up(workers=1)          # or the module-scoped `host_fleet` fixture (tests/conftest.py)
    fleet.run("coord", "coordinator", "nodes", "--address", fleet.head_address)
    fleet.hosts["w1"].cpu                    # the CPU the host may use ("0"); .ip, .venv, .role
    fleet.cgroups("w1")                      # its cgroup folders (cpu.cfs_quota_us / cpuset.cpus are there)
    fleet.link("w1", up=False)               # cut its cable at the switch; up=True restores it
    fleet.add("w2", venv=other_venv)         # one more node, e.g. from another checkout
    fleet.down()                             # everything it made: nodes, processes, namespaces, cgroups

Commands run with the host's environment only (deploy/test-fleet.sh exec): pass variables in `env`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "test-fleet.sh"
HEAD_PORT = 6379


def unavailable() -> Optional[str]:
    """Why a fleet of namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups)"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip' not found)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"'ip netns' does not work here: {probe.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    cpu: str
    venv: str
    role: str      # head | worker | coord


class HostFleet:
    def __init__(self, name: str):
        self.name = name
        self.root = Path("/tmp") / name
        self.env = {**{k: v for k, v in os.environ.items() if k != "FLEET_ROOT"}, "FLEET_NAME": name}

    @classmethod
    def up(cls, workers: int = 1, cpu_quota_pct: int = 100, venv: Optional[str] = None) -> "HostFleet":
        fleet = cls("fb" + secrets.token_hex(3))
        # a subnet of its own: `ray start --head` refuses an address whose GCS runs anywhere on the machine,
        # another fleet's included
        args = ["up", "--workers", str(workers), "--cpu-quota", str(cpu_quota_pct),
                "--net", f"10.213.{secrets.randbelow(254) + 1}"]
        if venv:
            args += ["--venv", venv]
        try:
            fleet._script(*args, timeout=240)
        except BaseException:
            fleet.down()
            raise
        return fleet

    def _script(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"test-fleet.sh {' '.join(args)}: rc {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    @property
    def hosts(self) -> dict[str, Host]:
        out = {}
        for line in (self.root / "hosts").read_text().splitlines():
            name, ip, cpu, venv, role, _ = line.split()
            out[name] = Host(name, ip, cpu, venv, role)
        return out

    @property
    def head_address(self) -> str:
        return f"{self.hosts['head'].ip}:{HEAD_PORT}"

    def cgroups(self, host: str) -> list[Path]:
        found = [Path(p) / self.cgroup_name / host for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuset")]
        return [p for p in found if p.is_dir()]

    @property
    def cgroup_name(self) -> str:
        return f"fleetbench-{self.name}"

    def _argv(self, host: str, cmd: tuple, env: Optional[dict]) -> list[str]:
        pairs = [f"{k}={v}" for k, v in (env or {}).items()]
        return [str(SCRIPT), "exec", host, "env", *pairs, *map(str, cmd)]

    def run(self, host: str, *cmd, env: Optional[dict] = None, timeout: float = 300,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """CMD on HOST, its output captured; on timeout its whole process group is killed."""
        proc = self.popen(host, *cmd, env=env, cwd=cwd)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{host}: {' '.join(map(str, cmd))} ran past {timeout} s:\n{err[-3000:]}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, host: str, *cmd, env: Optional[dict] = None, cwd: Optional[Path] = None) -> subprocess.Popen:
        """CMD on HOST in a session of its own (kill it with os.killpg(p.pid, ...))."""
        return subprocess.Popen(self._argv(host, cmd, env), env=self.env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def link(self, host: str, up: bool) -> None:
        self._script("link", host, "up" if up else "down")

    def add(self, host: str, venv: Optional[str] = None, kind: str = "cpu") -> Host:
        self._script("add", host, "--kind", kind, *(["--venv", venv] if venv else []), timeout=180)
        return self.hosts[host]

    def stop_node(self, host: str) -> None:
        """Stop one host's Ray node as a user would (start-node.sh stop --name)."""
        done = self.run(host, str(ROOT / "deploy" / "start-node.sh"), "stop", "--name", host, timeout=60)
        assert done.returncode == 0, done.stderr

    def down(self) -> None:
        subprocess.run([str(SCRIPT), "down"], env=self.env, capture_output=True, text=True, timeout=180)


def other_checkout(dest: Path, venv: Path = Path(sys.prefix)) -> Path:
    """A second checkout of this code with one line changed, and its own venv; returns the venv.

    The venv is a hard-linked copy of `venv` (cp -al; a file pip replaces gets a new inode, so the
    original is untouched), its scripts pointed at their new interpreter, fleetbench installed
    editable from the copy as the install guide does.
    """
    src, new_venv = dest / "src", dest / "venv"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    with open(src / "agent" / "probe.py", "a") as f:
        f.write("# the one line this checkout adds\n")
    subprocess.run(["cp", "-al", str(venv), str(new_venv)], check=True)
    old = f"#!{venv}/bin/python"
    for script in (new_venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            with open(script, "rb") as f:
                first = f.readline()
            if first.rstrip().startswith(old.encode()):
                text = script.read_bytes()
                script.unlink()                    # a new file: the original venv's copy stays as it was
                script.write_bytes(text.replace(old.encode(), f"#!{new_venv}/bin/python".encode(), 1))
                script.chmod(0o755)
    subprocess.run([str(new_venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", ".", "--no-deps",
                    "--no-build-isolation"], cwd=src, check=True, capture_output=True)
    return new_venv
