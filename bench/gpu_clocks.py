"""Summarise the clock log ``bench/device_run.sh`` samples with ``nvidia-smi`` every second: the
SM clock, power and temperature over the busy samples (power above a third of the highest), so a
run's figures can be read against the clocks the GPU held while they were taken.

Usage: ``python bench/gpu_clocks.py gpu-clocks-HHMMSS.csv [--json OUT]``
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def _number(text: str | None) -> float | None:
    """``"1980 MHz"`` → 1980.0; ``"[N/A]"``, empty or missing → None."""
    try:
        return float((text or "").strip().split()[0])
    except (ValueError, IndexError):
        return None


def _column(row: dict[str, str], name: str) -> float | None:
    """A sample's value under ``name``, whatever unit nvidia-smi appends to the header
    (``"clocks.current.sm [MHz]"`` for the query field ``clocks.sm``)."""
    for key, value in row.items():
        if key and key.split(" [")[0].strip() == name:
            return _number(value)
    return None


def summarise(path: Path) -> dict[str, float]:
    """The busy samples' SM clock (median, lowest), the clock's ceiling, power and temperature
    (median, highest), and how many samples there were."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    samples = []
    for row in rows:
        clock, power = _column(row, "clocks.current.sm"), _column(row, "power.draw")
        if clock is not None and power is not None:
            samples.append((clock, power, _column(row, "temperature.gpu") or 0.0,
                            _column(row, "clocks.max.sm") or 0.0))
    if not samples:
        return {"samples": 0}
    top_power = max(power for _, power, _, _ in samples)
    busy = [sample for sample in samples if sample[1] >= top_power / 3]
    clocks = [sample[0] for sample in busy]
    return {"samples": len(samples), "busy_samples": len(busy),
            "sm_clock_mhz_median": statistics.median(clocks), "sm_clock_mhz_lowest": min(clocks),
            "sm_clock_mhz_max": max(sample[3] for sample in samples),
            "power_w_median": statistics.median(sample[1] for sample in busy),
            "power_w_highest": top_power,
            "temperature_c_highest": max(sample[2] for sample in samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    summary = summarise(args.log)
    print("gpu clocks: " + ", ".join(f"{key} {value:g}" for key, value in summary.items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
