"""Train a recipe with synthetic latents and random weights; record speed, memory and the
`verify` layout estimate beside the measured peak.

Usage (on a GPU machine, from the repository root):

    python bench/train_recipe.py recipes/edge_hdvila.toml --nproc 1 --steps 20 \
        --set parallel.activation_checkpointing='"full"'

Runs `ctrlpost train RECIPE --synthetic` (the real engine: FSDP2, bf16, EMA, checkpoints) in a
scratch output folder, then reads its metrics.jsonl. Writes
bench/results/train-<recipe>-<N>gpu-<device>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def ctrlpost(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ctrlpost", *args]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, env=env, text=True, capture_output=True, check=False)


def train_synthetic(
    recipe: str, sets: list[str], *, nproc: int, output: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], float]:
    """`ctrlpost train RECIPE --synthetic` with ``--set`` overrides ``sets`` (which must put the
    run under ``output``): the finished process, its step records and its wall time."""
    set_args = [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    run = ctrlpost("train", recipe, *set_args, "--synthetic", "--nproc", str(nproc), env=env)
    wall = time.perf_counter() - start
    records = [json.loads(line) for f in output.rglob("metrics.jsonl")
               for line in f.read_text().splitlines() if line.strip()]
    return run, [r for r in records if "loss" in r], wall


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch run folder")
    args = parser.parse_args()

    import torch

    scratch = Path(tempfile.mkdtemp(prefix="ctrlpost-bench-"))
    sets = [f"train.steps={args.steps}", "logging.every_steps=1", "logging.tensorboard=false",
            f"checkpoint.every_steps={args.steps}", f"job.output_root='{scratch}'",
            f"parallel.nproc_per_node={args.nproc}", *args.overrides]
    set_args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    layout = ctrlpost("verify", args.recipe, *set_args, "--stages", "recipe,layout", "--json",
                      "--gpus", str(args.nproc), env=env)
    estimate = json.loads(layout.stdout) if layout.stdout.strip().startswith("{") else {}
    run, records, wall = train_synthetic(args.recipe, sets, nproc=args.nproc, output=scratch,
                                         env=env)
    print(run.stdout[-6000:], run.stderr[-4000:], sep="\n")
    steady = [r["step_s"] for r in records if r["step"] > 2]
    layout_stage = next((s for s in estimate.get("stages", []) if s["name"] == "layout"), {})
    result = {
        "benchmark": "train_recipe",
        "recipe": args.recipe,
        "overrides": sets,
        "device": device_name(),
        "gpus": args.nproc,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "returncode": run.returncode,
        "steps_logged": len(records),
        "wall_s": wall,
        "median_step_s": statistics.median(steady) if steady else None,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in records[2:]) if len(
            records) > 2 else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[2:]) if len(
            records) > 2 else None,
        "peak_gpu_mem_gib": max((r.get("gpu_mem_gib", 0.0) for r in records), default=None),
        "losses": [r["loss"] for r in records],
        "layout_estimate": layout_stage.get("summary", {}),
        "layout_problems": [p for p in estimate.get("problems", []) if p["stage"] == "layout"],
    }
    peak = result["peak_gpu_mem_gib"]
    estimated = result["layout_estimate"].get("peak_allocated_gib")
    if peak and estimated:
        result["estimate_error"] = (estimated - peak) / peak
    args.out.mkdir(parents=True, exist_ok=True)
    slug = device_name().lower().replace(" ", "-")
    name = Path(args.recipe).stem
    out = args.out / f"train-{name}-{args.nproc}gpu-{slug}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
