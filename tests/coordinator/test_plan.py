"""Planning without Ray: target selection, kinds from labels, unsupported rows, stable job ids."""
import pytest

from fleetbench.agent.probe import detect_kinds
from fleetbench.coordinator.plan import plan, primary_kind, select_nodes
from fleetbench.shared.errors import SweepError
from fleetbench.shared.job import NodeProfile
from fleetbench.shared.sweep import parse_sweep

CPU_ONLY = {"null": {"available": True, "devices": ["cpu"]},
            "onnxruntime": {"available": True, "devices": ["cpu"]},
            "tensorrt": {"available": False, "reason": "tensorrt: no NVIDIA GPU on this node", "devices": []}}
WITH_GPU = {**CPU_ONLY, "onnxruntime": {"available": True, "devices": ["cpu", "cuda"]},
            "tensorrt": {"available": True, "devices": ["cuda"]}}


def node(key, kinds, node_id, backends=CPU_ONLY, hostname="host-a"):
    return NodeProfile(hostname=hostname, kinds=kinds, cpu_model="Some CPU", cores=2, logical_cpus=2,
                       isa_flags=[], ram_mb=1024, node_id=node_id, node_key=key, backends=backends)


FLEET = [node("n-cpu", ["cpu"], "a" * 56), node("n-intel", ["cpu", "intel"], "b" * 56),
         node("n-gpu", ["cpu", "nvidia"], "c" * 56, WITH_GPU, hostname="gpu-box")]


def sweep(**over):
    spec = {"name": "t", "models": [{"name": "m", "source": "timm:resnet18", "num_classes": 10,
                                     "input_size": [3, 32, 32]}],
            "backends": ["onnxruntime", "tensorrt"], "batch_sizes": [1, 4], **over}
    return parse_sweep(spec)


@pytest.mark.parametrize("targets, keys", [
    (["all"], {"n-cpu", "n-intel", "n-gpu"}),
    (["kind:intel"], {"n-intel"}),
    (["kind:nvidia"], {"n-gpu"}),
    (["kind:cpu"], {"n-cpu", "n-intel", "n-gpu"}),
    (["node:n-cpu"], {"n-cpu"}),
    (["node:gpu-box"], {"n-gpu"}),           # by hostname
    (["node:bbbbbbbb"], {"n-intel"}),        # by a Ray node id prefix
    (["kind:intel", "node:n-intel", "node:n-cpu"], {"n-intel", "n-cpu"}),   # overlaps once
])
def test_select_nodes(targets, keys):
    chosen = select_nodes(targets, FLEET)
    assert {n.node_key for n in chosen} == keys
    assert len(chosen) == len(keys)


@pytest.mark.parametrize("targets, named", [(["kind:nvidia"], "kind:nvidia"),
                                            (["all", "node:nowhere"], "node:nowhere"),
                                            (["node:abc"], "node:abc")])   # too short for an id prefix
def test_a_selector_matching_nothing_is_an_error_naming_it(targets, named):
    fleet = FLEET[:2]
    with pytest.raises(SweepError, match=f"targets\\[{targets.index(named)}\\]: '{named}' matches no node"):
        select_nodes(targets, fleet)


def test_plan_dispatches_what_a_node_can_do_and_files_the_rest_as_unsupported():
    p = plan(sweep(), FLEET)
    # onnxruntime: cpu on every node, cuda on the gpu node; tensorrt: cuda on the gpu node only
    dispatched = {(j.node_key, j.backend, j.device, j.batch_size) for j in p.jobs}
    assert len(dispatched) == len(p.jobs) == 2 * (3 + 1 + 1)
    assert ("n-gpu", "tensorrt", "cuda", 4) in dispatched and ("n-gpu", "onnxruntime", "cuda", 1) in dispatched
    unsup = {(r.hostname, r.node_id[:1], r.backend) for r in p.unsupported}
    assert unsup == {("host-a", "a", "tensorrt"), ("host-a", "b", "tensorrt")}
    assert all(r.status == "unsupported" and "no NVIDIA GPU" in r.error for r in p.unsupported)
    assert p.total == len(p.jobs) + len(p.unsupported) == 14
    kinds = {(j.node_key, j.device): j.hw_kind for j in p.jobs}
    assert kinds[("n-cpu", "cpu")] == "cpu" and kinds[("n-intel", "cpu")] == "intel"
    assert kinds[("n-gpu", "cuda")] == "nvidia"


def test_job_ids_are_stable_per_node_key_not_per_ray_node_id():
    a = plan(sweep(targets=["node:n-cpu"]), FLEET)
    restarted = [node("n-cpu", ["cpu"], "d" * 56)]           # same node, new Ray id after a restart
    b = plan(sweep(targets=["node:n-cpu"]), restarted)
    assert [j.job_id for j in a.jobs] == [j.job_id for j in b.jobs]
    other = plan(sweep(targets=["node:n-intel"]), FLEET)
    assert not {j.job_id for j in a.jobs} & {j.job_id for j in other.jobs}
    assert len({j.job_id for j in a.jobs}) == len(a.jobs)


@pytest.mark.parametrize("label, kinds", [
    (None, ["cpu"]),
    ("cpu", ["cpu"]),
    ("intel", ["cpu", "intel"]),
    ("cpu-intel", ["cpu", "intel"]),           # deploy/start-node.sh joins several kinds with '-'
    ("cpu-intel-nvidia", ["cpu", "intel", "nvidia"]),
    ("intel,nvidia", ["cpu", "intel", "nvidia"]),   # by hand
    ("nvidia+intel", ["cpu", "nvidia", "intel"]),
])
def test_kinds_from_the_fleet_kind_label(label, kinds):
    assert detect_kinds("AMD EPYC", [], label) == kinds


def test_kinds_from_the_probe_and_the_label_together():
    assert detect_kinds("Intel(R) Xeon(R) Gold", [{"name": "H100"}], None) == ["cpu", "nvidia", "intel"]
    assert detect_kinds("Intel(R) Xeon(R) Gold", [], "cpu-intel") == ["cpu", "intel"]


def test_primary_kind():
    intel, gpu = FLEET[1], FLEET[2]
    assert primary_kind(intel, "openvino", "cpu") == "intel"
    assert primary_kind(gpu, "onnxruntime", "cuda") == "nvidia"
    assert primary_kind(gpu, "onnxruntime", "cpu") == "cpu"
    assert primary_kind(FLEET[0], "onnxruntime", "cpu") == "cpu"


def test_scenarios_are_part_of_the_job_and_its_id():
    p = plan(sweep(scenarios=["latency", "throughput"], targets=["node:n-cpu"]), FLEET)
    got = {(j.backend, j.batch_size, j.scenario) for j in p.jobs}
    assert got == {("onnxruntime", b, s) for b in (1, 4) for s in ("latency", "throughput")}
    assert len({j.job_id for j in p.jobs}) == 4
    assert {r.scenario for r in p.unsupported} == {"latency", "throughput"}
    assert {j.scenario for j in plan(sweep(targets=["node:n-cpu"]), FLEET).jobs} == {"latency"}   # the default
    for bad in (["latency", "latency"], ["offline"], []):
        with pytest.raises(SweepError, match="scenarios"):
            sweep(scenarios=bad)


def test_a_node_whose_code_or_versions_differ_gets_unsupported_rows_naming_the_difference():
    from fleetbench.coordinator.cluster import own_versions, version_skew
    mine = own_versions()
    assert mine["fleetbench-code"] and mine["ray"] and mine["python"]
    same, skewed = node("n-cpu", ["cpu"], "a" * 56), node("n-old", ["cpu"], "d" * 56)
    same.versions = dict(mine)
    skewed.versions = {**mine, "fleetbench-code": "0123456789abcdef", "ray": "2.59.0"}
    assert version_skew(same, mine) is None
    skewed.refused = version_skew(skewed, mine)
    assert skewed.refused == (f"node n-old differs from the coordinator: fleetbench-code 0123456789abcdef (coordinator: "
                              f"{mine['fleetbench-code']}), ray 2.59.0 (coordinator: {mine['ray']})")
    p = plan(sweep(backends=["null"], batch_sizes=[1, 4]), [same, skewed])
    assert {j.node_key for j in p.jobs} == {"n-cpu"} and len(p.jobs) == 2
    assert [(r.node_id, r.status, r.error) for r in p.unsupported] == [("d" * 56, "unsupported", skewed.refused)] * 2


def test_a_sweep_over_ray_client_is_refused_before_ray_is_touched():
    from fleetbench.coordinator.cluster import connect
    from fleetbench.shared.errors import FleetError
    with pytest.raises(FleetError, match=r"^--address ray://head:10001: a sweep cannot run over Ray Client"):
        connect("ray://head:10001", dispatch=True)
