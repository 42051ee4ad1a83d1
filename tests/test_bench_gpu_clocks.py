"""bench/gpu_clocks.py: the clock log of a device call, summarised over its busy samples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"

# What `nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,
# clocks_event_reasons.active --format=csv -l 1` writes: units in the header and the values.
LOG = """\
timestamp, clocks.current.sm [MHz], clocks.max.sm [MHz], power.draw [W], temperature.gpu, \
clocks_event_reasons.active
2026/12/07 10:16:03.123, 345 MHz, 1980 MHz, 70.12 W, 31, 0x0000000000000001
2026/12/07 10:16:04.123, 1980 MHz, 1980 MHz, 650.50 W, 55, 0x0000000000000000
2026/12/07 10:16:05.123, 1755 MHz, 1980 MHz, 700.00 W, 71, 0x0000000000000004
2026/12/07 10:16:06.123, [N/A], 1980 MHz, [N/A], 71, [N/A]
"""


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_clocks", BENCH / "gpu_clocks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_busy_samples_give_the_clocks_the_gpu_held(tmp_path: Path) -> None:
    log = tmp_path / "gpu-clocks.csv"
    log.write_text(LOG)
    summary = _module().summarise(log)
    # the idle sample (70 W, under a third of the highest power) and the unreadable one are left
    # out of the clocks; the idle one still counts as a sample
    assert summary == {"samples": 3, "busy_samples": 2, "sm_clock_mhz_median": 1867.5,
                       "sm_clock_mhz_lowest": 1755.0, "sm_clock_mhz_max": 1980.0,
                       "power_w_median": 675.25, "power_w_highest": 700.0,
                       "temperature_c_highest": 71.0}


def test_a_log_without_samples_says_so(tmp_path: Path) -> None:
    log = tmp_path / "gpu-clocks.csv"
    log.write_text(LOG.splitlines()[0] + "\n")
    assert _module().summarise(log) == {"samples": 0}
