"""Multi-GPU scaling of a recipe with synthetic latents and random weights, and a resume on
fewer GPUs, in one call.

Parts (``--parts``, each adds its section to the same JSON, so they may run in separate calls):

* ``baseline``: ``ctrlpost train RECIPE --synthetic`` on 1 GPU for ``--steps`` steps;
* ``scale``: the same on ``--gpus`` N GPUs, saving at step ``--steps`` / 2: samples/s, scaling
  efficiency against the baseline (samples/s at N ÷ (N × samples/s at 1)), peak memory of rank 0,
  model FLOPs per second against a bf16 matmul measured in this process (``bench/flops.py``);
* ``resume``: the N-GPU run's mid-point checkpoint resumed on N/2 and on 1 GPU, with
  ``train.grad_accum_steps`` keeping the global batch, for ``--resume-steps`` steps: the losses
  against the N-GPU run's (exactly equal on CPU; within bf16 reduction-order noise on GPUs).

Synthetic clips and random weights are pure functions of the seed (and of step and global
micro-batch index), independent of the world size, so runs on different GPU counts compare.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends).

Usage (from the repository root)::

    python bench/scaling.py recipes/edge_hdvila.toml --gpus 8 --steps 20 \
        --set 'parallel.activation_checkpointing="full"'
    python bench/scaling.py recipes/edge_tiny.toml --gpus 2 --steps 4 --resume-steps 2  # CPU

Writes ``bench/results/scaling-<recipe>-<N>proc-<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

common.ensure_ctrlpost_importable()

import torch  # noqa: E402
from train_recipe import train_synthetic  # noqa: E402

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                "NVSHMEM_DISABLE_NVLS": "1"}


def run_dir(output: Path) -> Path:
    (found,) = {p.parent for p in output.rglob("recipe.toml")} or {output}
    return found


def train(recipe: str, output: Path, *, gpus: int, steps: int, accum: int, save_every: int,
          overrides: list[str]) -> dict[str, Any]:
    """One `ctrlpost train --synthetic` run; its metrics and wall time."""
    sets = [f"job.output_root='{output}'", f"train.steps={steps}",
            f"train.grad_accum_steps={accum}", f"checkpoint.every_steps={save_every}",
            "logging.every_steps=1", "logging.tensorboard=false", *overrides]
    env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1"}
    done, records, wall = train_synthetic(recipe, sets, nproc=gpus, output=output, env=env)
    if done.returncode != 0:
        raise SystemExit(f"train failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    steady = [r for r in records if r["step"] > 2] or records
    return {
        "gpus": gpus, "grad_accum_steps": accum, "steps": steps, "wall_s": wall,
        "median_step_s": statistics.median(r["step_s"] for r in steady),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in steady),
        "peak_gpu_mem_gib_rank0": max((r.get("gpu_mem_gib", 0.0) for r in records), default=0.0),
        "losses": {r["step"]: r["loss"] for r in records},
    }


def model_flops_per_sample(recipe_path: str, overrides: list[str]) -> float:
    """Model FLOPs of one training sample (base fwd + input-grad bwd, control fwd + bwd)."""
    from flops import model_flops

    from ctrlpost.engine import build
    from ctrlpost.recipe import load

    recipe = load(recipe_path, overrides)
    flavor = build.flavor_of(recipe)
    _, frames, height, width = build.latent_shape(recipe, flavor)
    patch = flavor.base.patch_spatial
    tokens = frames * (height // patch) * (width // patch)
    return model_flops(flavor, tokens, frames, part="control")["total"]


def resume_from(source: Path, output: Path, step: int) -> None:
    """Put the N-GPU run's checkpoint of ``step`` in a fresh run folder of the same job."""
    checkpoints = run_dir(source) / "checkpoints"
    name = f"step_{step:09d}"
    target = run_dir(source).relative_to(source)
    (output / target / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoints / name, output / target / "checkpoints" / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--gpus", type=int, default=max(torch.cuda.device_count(), 1))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resume-steps", type=int, default=2)
    parser.add_argument("--parts", default="baseline,scale,resume")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = common.device_name(device)
    out = args.out or common.RESULTS / (f"scaling-{Path(args.recipe).stem}-{args.gpus}proc-"
                                        f"{common.slug(name.split(' (')[0])}.json")
    record: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    record.update({"benchmark": "scaling", "recipe": args.recipe, "overrides": args.overrides,
                   "device": name, "gpus": args.gpus, "torch": torch.__version__,
                   "date": common.now(), "command": " ".join(sys.argv)})
    parts = set(args.parts.split(","))
    half = max(args.steps // 2, 1)
    scratch = Path(tempfile.mkdtemp(prefix="ctrlpost-scaling-"))
    try:
        if "baseline" in parts:
            record["baseline"] = train(args.recipe, scratch / "one", gpus=1, steps=args.steps,
                                       accum=1, save_every=args.steps, overrides=args.overrides)
            common.write_json(record, out)
        if "scale" in parts or "resume" in parts:
            record["scale"] = train(args.recipe, scratch / "many", gpus=args.gpus,
                                    steps=args.steps, accum=1, save_every=half,
                                    overrides=args.overrides)
            common.write_json(record, out)
        if "baseline" in record and "scale" in record:
            one, many = record["baseline"], record["scale"]
            record["scaling_efficiency"] = many["samples_per_s"] / (
                args.gpus * one["samples_per_s"])
            flops = model_flops_per_sample(args.recipe, args.overrides)
            record["model_flops_per_sample"] = flops
            if cuda:
                ceiling = common.matmul_ceiling(device)
                record["ceiling"] = ceiling
                record["model_flops_ratio_per_gpu"] = (
                    flops * many["samples_per_s"] / args.gpus / 1e12 / ceiling["tflops_median"])
        if "resume" in parts:
            reference = {int(k): v for k, v in record["scale"]["losses"].items()}
            steps = half + args.resume_steps
            resumed = {}
            for gpus in sorted({max(args.gpus // 2, 1), 1}, reverse=True):
                folder = scratch / f"resume{gpus}"
                resume_from(scratch / "many", folder, half)
                run = train(args.recipe, folder, gpus=gpus, steps=steps,
                            accum=args.gpus // gpus, save_every=steps, overrides=args.overrides)
                compared = range(half + 1, steps + 1)
                diffs = [abs(run["losses"][s] - reference[s]) for s in compared]
                resumed[str(gpus)] = {**run, "compared_steps": list(compared),
                                      "max_abs_loss_diff": max(diffs),
                                      "max_rel_loss_diff": max(d / abs(reference[s]) for d, s
                                                               in zip(diffs, compared,
                                                                      strict=True))}
            record["resume"] = {"saved_at_step": half, "saved_on_gpus": args.gpus,
                                "runs": resumed}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    common.write_json(record, out)
    rows = [(part, str(r["gpus"]), str(r["grad_accum_steps"]), f"{r['samples_per_s']:.3f}",
             f"{r['median_step_s']:.2f}", f"{r['peak_gpu_mem_gib_rank0']:.1f}")
            for part, r in (("baseline", record.get("baseline")), ("scale", record.get("scale")),
                            *((f"resume@{g}", r) for g, r in
                              record.get("resume", {}).get("runs", {}).items()))
            if r is not None]
    common.print_table(rows, ("run", "gpus", "accum", "samples/s", "s/step", "GiB rank0"))
    if "scaling_efficiency" in record:
        print(f"scaling efficiency at {args.gpus} GPUs: {record['scaling_efficiency']:.3f}")
    for gpus, run in record.get("resume", {}).get("runs", {}).items():
        print(f"resumed on {gpus}: max |loss diff| {run['max_abs_loss_diff']:.2e} over steps "
              f"{run['compared_steps']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
