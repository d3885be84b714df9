"""GPU visibility under Ray, on a real local Ray cluster whose GPUs are FAKE (declared with num_gpus, none
present): an agent task requests no GPUs and must still see the node's CUDA_VISIBLE_DEVICES, even with
Ray's old behaviour (blank it for zero-GPU tasks) forced on."""
import os

import pytest

pytestmark = pytest.mark.slow


def test_agent_task_fake_gpus_sees_the_nodes_cuda_visible_devices(monkeypatch):
    import ray

    import fleetbench.coordinator  # noqa: F401
    from fleetbench.coordinator.cluster import alive_nodes, node_options
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")                  # as deploy/start-node.sh sets it
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")       # Ray's old default: blank it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    @ray.remote(max_calls=1)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ray.init(address="local", num_cpus=1, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        node = alive_nodes()[0]
        plain = ray.get(visible.options(num_cpus=0).remote())
        assert plain == "", "this Ray does not blank CUDA_VISIBLE_DEVICES here: the test shows nothing"
        assert ray.get(visible.options(**node_options(node)).remote()) == "0,1"
    finally:
        ray.shutdown()
