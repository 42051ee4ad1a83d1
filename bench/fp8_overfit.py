"""The FP8 frozen base on the tiny overfit task, against bf16: loss curves of several seeds.

Runs the embedded default (`recipes/edge_tiny.toml`, tiny flavor, synthetic clips) with the
overfit settings of the slow test `test_the_tiny_overfit_task_halves_the_loss` (a random base,
here with its AdaLN layers perturbed so that its linears reach the output; one noise level, no
text dropout, no conditioning frames, the plain weighted MSE, lr 2e-3, 40 steps, one process),
in bf16 compute, with ``model.base_precision`` "bf16" and "fp8" (``--precisions``), for each
``--seeds`` (``job.seed``: the branch's initialisation, the data order and the noise draws).
Reports per run the median loss of the first and last 8 steps, and whether each run's final
loss lies within the first precision's (bf16's) seed-to-seed range. Runs `fetch-weights`,
`fetch-data` and `embed` first into a scratch folder.

    python bench/fp8_overfit.py --seeds 0,1,2 --out bench/results/fp8-overfit-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "edge_tiny.toml"
OVERFIT = ["train.steps=40", "logging.every_steps=1", "checkpoint.every_steps=40",
           "diffusion.p_mean=0.0", "diffusion.p_std=0.1", "diffusion.text_dropout=0.0",
           "diffusion.loss_add_logvar=false",
           "diffusion.condition_frames_max=0", "optim.lr=2e-3", "validation.every_steps=0",
           'model.precision="bf16"', "parallel.nproc_per_node=1"]


def ctrlpost(command: str, sets: list[str]) -> None:
    args = [sys.executable, "-m", "ctrlpost", command, str(RECIPE)]
    for value in sets:
        args += ["--set", value]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def losses(run_root: Path) -> dict[int, float]:
    metrics = next(run_root.rglob("metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def random_base(path: Path, *, adaln_std: float = 0.05) -> Path:
    """A random tiny base for the overfit task (the shipped pre-trained base already denoises
    these clips, so its loss would barely move): the reference initialisation, then N(0, 0.05²)
    in the last AdaLN layers, which the reference zeroes. With them zero every block's gate is
    ~0 and the base's linears, the layers FP8 changes, would not reach the output."""
    import torch

    from ctrlpost.engine.pretrain_tiny import BaseWithLogvar
    from ctrlpost.models import get_flavor
    from ctrlpost.models.blocks import FinalLayer, SubBlock
    from ctrlpost.models.state_dict import save_checkpoint

    model = BaseWithLogvar(get_flavor("tiny").base, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.net.modules():
            if isinstance(module, SubBlock | FinalLayer):
                last = module.adaLN_modulation[-1]
                assert isinstance(last, torch.nn.Linear)
                last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * adaln_std)
    return save_checkpoint(model.released_state({}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precisions", default="bf16,fp8",
                        help="model.base_precision values; the first is the reference")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ctrlpost-fp8-"))
    where = [f"weights.dir='{scratch / 'weights'}'", f"data.root='{scratch / 'data'}'"]
    for command in ("fetch-weights", "fetch-data", "embed"):
        ctrlpost(command, where)
    where.append(f"weights.base='{random_base(scratch / 'random_base.pt')}'")
    runs = []
    precisions = args.precisions.split(",")
    for precision in precisions:
        for seed in (int(s) for s in args.seeds.split(",")):
            out = scratch / f"{precision}-{seed}"
            start = time.perf_counter()
            ctrlpost("train", [*where, *OVERFIT, f"job.seed={seed}", f"job.output_root='{out}'",
                               f'model.base_precision="{precision}"'])
            history = losses(out)
            runs.append({"base_precision": precision, "seed": seed,
                         "seconds": round(time.perf_counter() - start, 1),
                         "first8_median": statistics.median(history[s] for s in range(1, 9)),
                         "last8_median": statistics.median(history[s] for s in range(33, 41)),
                         "losses": [history[s] for s in sorted(history)]})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"}), flush=True)
    bf16 = [r["last8_median"] for r in runs if r["base_precision"] == precisions[0]]
    low, high = min(bf16), max(bf16)
    for run in runs:
        run["within_bf16_seed_range"] = low <= run["last8_median"] <= high
    report = {"benchmark": "fp8_overfit", "recipe": "recipes/edge_tiny.toml", "settings": OVERFIT,
              "device": "cpu", "bf16_last8_range": [low, high], "runs": runs}
    text = json.dumps(report, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
