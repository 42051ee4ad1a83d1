"""Wall time of `ctrlpost --help` and of one completion query (the target: < 0.5 s warm).

Usage: python bench/cli_startup.py [--repeats 7]; writes bench/results/cli_startup-<host>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "ctrlpost")
    env = dict(os.environ)
    complete_env = {**env, "COMP_WORDS": "ctrlpost verify ", "COMP_CWORD": "2",
                    "_CTRLPOST_COMPLETE": "complete_bash"}
    cases = {"help": ([exe, "--help"], env), "complete_recipe": ([exe], complete_env)}
    figures = {}
    for name, (argv, case_env) in cases.items():
        timed(argv, case_env)  # warm the file cache and bytecode
        runs = [timed(argv, case_env) for _ in range(args.repeats)]
        figures[name] = {"median_s": statistics.median(runs), "min_s": min(runs)}
        median, best = figures[name]["median_s"], figures[name]["min_s"]
        print(f"{name:16s} median {median:.3f} s  min {best:.3f} s")
    out = Path(__file__).parent / "results" / "cli_startup-cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": f"{platform.processor() or platform.machine()} cpu",
                               "python": platform.python_version(),
                               "date": dt.date.today().isoformat(), "figures": figures},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
