"""Nodes sharing a machine: the overlap check and the dispatcher's turn order (no Ray needed for either)."""
from fleetbench.coordinator.dispatch import Dispatcher
from fleetbench.coordinator.hosts import HostWindows
from fleetbench.shared.job import Result


def row(job_id, node_id, host, start, end, status="ok", validity=None):
    return Result(job_id=job_id, sweep="s", model="m", compression="none", backend="b", device="cpu",
                  batch_size=1, node_id=node_id, hostname="h", hw_kind="cpu", host_id=host, status=status,
                  valid=validity is None, validity=validity,
                  window_start=f"2026-01-01T00:00:{start:02d}+00:00", window_end=f"2026-01-01T00:00:{end:02d}+00:00")


def test_overlapping_windows_on_one_host_mark_both_rows():
    seen = HostWindows()
    assert seen.check(row("a", "node-one", "m1", 0, 10)) == []
    assert seen.check(row("b", "node-two", "m2", 5, 15)) == []          # another machine: fine
    late = row("c", "node-two", "m1", 10, 20)                            # touches, does not overlap
    assert seen.check(late) == [] and late.valid
    clash = row("d", "node-thr", "m1", 8, 12, validity="cv 12% > 10%")
    older = seen.check(clash)
    assert older == [("a", "timed while job d ran on the same host (node node-thr)"),
                     ("c", "timed while job d ran on the same host (node node-thr)")]
    assert clash.valid is False
    assert clash.validity == ("cv 12% > 10%; timed while job a ran on the same host (node node-one); "
                              "timed while job c ran on the same host (node node-two)")
    failed = row("e", "node-one", "m1", 0, 30, status="failed")
    assert seen.check(failed) == []


def test_nodes_of_one_machine_take_turns_in_rotation():
    d = Dispatcher(on_result=lambda r: None)
    d.host_of = {"n1": "m1", "n2": "m1", "n3": "m1", "solo": "m2"}
    assert d.host_mates("n1") == ["n2", "n3"]
    assert d.host_mates("n2") == ["n3", "n1"]
    assert d.host_mates("solo") == [] and d.host_mates("unknown") == []
