"""Energy counters on a FAKE powercap tree and a FAKE NVML (this VM has neither), and the row's figure."""
import sys

import pytest

from fleetbench.agent import validity
from fleetbench.agent.energy import EnergyMeter
from tests.agent.test_validity import STEADY, make_job, record, window
from tests.fixtures.fake_gpu import FakeGpu, fake_pynvml


def zone(root, name, uj, top=2**32 - 1):
    d = root / name
    d.mkdir()
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{top}\n")
    return d


def test_rapl_fake_powercap_sums_packages_skips_subzones_and_survives_a_wrap(tmp_path):
    p0 = zone(tmp_path, "intel-rapl:0", 5_000_000, top=9_999_999)
    p1 = zone(tmp_path, "intel-rapl:1", 1_000_000)
    zone(tmp_path, "intel-rapl:0:0", 123)                  # the cores of package 0: part of it
    meter = EnergyMeter(powercap=str(tmp_path))
    assert meter.source == "rapl" and meter.reason is None
    a = meter.read()
    (p0 / "energy_uj").write_text("9000000\n")
    (p1 / "energy_uj").write_text("1500000\n")
    assert meter.read() - a == pytest.approx(4.0 + 0.5)
    (p0 / "energy_uj").write_text("1000000\n")              # wrapped past 9_999_999
    assert meter.read() - a == pytest.approx((10_000_000 - 5_000_000 + 1_000_000) / 1e6 + 0.5)


def test_no_or_unreadable_rapl_is_a_reason(tmp_path):
    meter = EnergyMeter(powercap=str(tmp_path / "absent"))
    assert meter.read() is None and "no RAPL package zone" in meter.reason
    d = zone(tmp_path, "intel-rapl:0", 1)
    (d / "energy_uj").unlink()
    (d / "energy_uj").mkdir()                               # unreadable as a file
    meter = EnergyMeter(powercap=str(tmp_path))
    assert meter.read() is None and "not readable" in meter.reason


def test_nvml_total_energy_fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([FakeGpu(energy_mj=[1000, 1000, 3500])]))
    meter = EnergyMeter(gpu_index=0)
    assert meter.source == "nvml"
    a = meter.read()
    assert meter.read() - a == pytest.approx(2.5)
    meter.close()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([FakeGpu()]))   # a GPU without the counter
    meter = EnergyMeter(gpu_index=0)
    assert meter.read() is None and "Not Supported" in meter.reason


def test_the_row_gets_joules_per_item_or_a_note_saying_why_not():
    job = make_job()                       # batch size 2
    w = validity.Window(**{**window(STEADY[:100]).__dict__, "energy_j": 30.0})
    res, notes = record([w, w], job)
    assert notes == []
    assert res.energy_j_per_item == pytest.approx(60.0 / (200 * 2))
    w = validity.Window(**{**window(STEADY[:100]).__dict__, "energy_reason": "energy: no RAPL package zone under /x"})
    res, notes = record([w], job)
    assert notes == ["energy: no RAPL package zone under /x: energy_j_per_item left empty"]
    assert res.energy_j_per_item is None
