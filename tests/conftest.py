"""Shared test setup: Ray stays on loopback, engine caches go to a temp dir, workers can import tests.*"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray workers inherit the environment: let them import test-only model modules (tests.fixtures.*).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO_CHECKPOINT = ROOT / "examples" / "digits" / "model.safetensors"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    os.environ["FLEETBENCH_CACHE"] = str(tmp_path_factory.mktemp("fleetbench-cache"))
    yield


@pytest.fixture
def demo_model_spec():
    from fleetbench.shared.sweep import ModelSpec
    return ModelSpec(name="digits-test_resnet", source="timm:test_resnet", checkpoint=str(DEMO_CHECKPOINT),
                     num_classes=10, input_size=(3, 32, 32))


@pytest.fixture
def quick_measure():
    from fleetbench.shared.sweep import MeasureSpec
    return MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=10)


def cached_artifact(job, backend):
    """The node cache's artifact of `job` for `backend` (agent/prepare.py stored_artifact), or None."""
    from fleetbench.agent import prepare
    got = prepare.stored_artifact(job, backend)
    return None if got is None else got[0]


@pytest.fixture(scope="module")
def host_fleet():
    """A head, one worker and a coordinator host, each a network namespace with one CPU (tests/fleet_hosts.py),
    made once per test module and removed after it, also when a test fails."""
    from tests.fleet_hosts import HostFleet, unavailable
    why = unavailable()
    if why:
        pytest.skip(f"a fleet of hosts as network namespaces {why}")
    fleet = HostFleet.up(workers=1)
    try:
        yield fleet
    finally:
        fleet.down()
