"""Energy counters where the hardware reports them: NVML's total energy on NVIDIA GPUs, RAPL through
/sys/class/powercap on Intel and AMD CPUs. Never raises: a node without either gives a reason.

RAPL counts a whole CPU package (every process on it), NVML a whole GPU: on a busy machine the
figure includes the others' share, which the validity rules flag.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any, Optional

POWERCAP = "/sys/class/powercap"


class EnergyMeter:
    """`read()` -> joules so far (a counter; only differences mean something), or None with `reason`."""

    def __init__(self, gpu_index: Optional[int] = None, powercap: str = POWERCAP):
        self.source: Optional[str] = None
        self.reason: Optional[str] = None
        self._nvml: Any = None
        self._zones: list[tuple[str, int]] = []
        self._last: dict[str, int] = {}
        self._wraps: dict[str, int] = {}
        if gpu_index is not None:
            self._open_nvml(gpu_index)
        else:
            self._open_rapl(powercap)

    def _open_nvml(self, index: int) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._nvml, self.source = pynvml, "nvml"
        except Exception as e:
            self.reason = f"energy: NVML total energy not available ({type(e).__name__}: {e})"

    def _open_rapl(self, root: str) -> None:
        # package zones only (intel-rapl:0, intel-rapl:1); their subzones (core, dram) are parts of them
        zones = sorted(p for p in glob.glob(os.path.join(root, "intel-rapl:*"))
                       if re.fullmatch(r"intel-rapl:\d+", os.path.basename(p)))
        if not zones:
            self.reason = f"energy: no RAPL package zone under {root}"
            return
        for zone in zones:
            try:
                with open(os.path.join(zone, "max_energy_range_uj")) as f:
                    top = int(f.read())
                with open(os.path.join(zone, "energy_uj")) as f:
                    int(f.read())
            except (OSError, ValueError) as e:
                self.reason = f"energy: {zone}/energy_uj not readable ({e.__class__.__name__})"
                self._zones = []
                return
            self._zones.append((zone, top))
        self.source = "rapl"

    def read(self) -> Optional[float]:
        if self._nvml is not None:
            try:
                return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3   # mJ
            except Exception as e:
                self.reason = f"energy: NVML: {e}"
                return None
        if not self._zones:
            return None
        total = 0.0
        for zone, top in self._zones:
            try:
                with open(os.path.join(zone, "energy_uj")) as f:
                    now = int(f.read())
            except (OSError, ValueError) as e:
                self.reason = f"energy: {zone}/energy_uj: {e.__class__.__name__}"
                return None
            if now < self._last.get(zone, 0):     # the counter wrapped at max_energy_range_uj
                self._wraps[zone] = self._wraps.get(zone, 0) + 1
            self._last[zone] = now
            total += (now + self._wraps.get(zone, 0) * (top + 1)) / 1e6
        return total

    def close(self) -> None:
        if self._nvml is not None:
            from fleetbench.agent.gpu import nvml_shutdown
            nvml_shutdown(self._nvml)
            self._nvml = None
