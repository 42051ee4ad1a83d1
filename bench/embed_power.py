"""`embed`'s float16 pass over bench/embed.py's caption mix, variants timed in alternation
while ``nvidia-smi`` logs power and SM clock: is the whole pass at the GPU's power limit, and
does a change that speeds up a kernel alone speed up the pass?

Variants: ``lean`` (what `embed` runs), ``lean-no-tma`` (the attention kernel on computed
addresses instead of tensor descriptors), ``lean-gather`` (the attention kernel reading each
score's bias by its own offset, as before the bias run: bench/attention_variants.py's ``tma``),
``lean-bn32`` / ``lean-bn16`` (the kernel with 32 / 16 keys per tile).

    python bench/embed_power.py --variants lean,lean-gather --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import _common as common
import torch

common.ensure_ctrlpost_importable()

import embed  # noqa: E402  (the bench script beside this one)

from ctrlpost.data import packed_attention  # noqa: E402
from ctrlpost.data.embed import TextEncoder, lean_network  # noqa: E402
from ctrlpost.recipe import EmbedOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


DEFAULTS = EmbedOptions()  # `embed`'s batching
VARIANTS = ("lean", "lean-no-tma", "lean-gather", "lean-bn32", "lean-bn16")


def gather_attention(qkv: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor,
                     lengths: torch.Tensor, *, max_length: int, heads: int, head_dim: int,
                     **_: Any) -> torch.Tensor:
    import attention_variants

    return attention_variants.tma_variant(
        qkv, bias, {"starts": starts, "lengths": lengths, "longest": max_length},
        heads=heads, head_dim=head_dim, block_m=64, block_n=16, warps=4, stages=3,
        warp_specialize=False, tma_store=False, bias_mode=1)


def run_pass(variant: str, encoder: TextEncoder, captions: list[str]) -> Any:
    """One pass as `embed` batches it; ``lean-no-tma`` with tensor descriptors turned off."""
    patches = {"lean-no-tma": ("copies_by_tma", lambda qkv: False),
               "lean-gather": ("packed_attention", gather_attention),
               "lean-bn32": ("packed_attention",
                             functools.partial(packed_attention.packed_attention, block_n=32)),
               "lean-bn16": ("packed_attention",
                             functools.partial(packed_attention.packed_attention, block_n=16))}
    if variant in patches:
        with mock.patch.object(packed_attention, *patches[variant]):
            return embed.ctrlpost_pass(encoder, captions, DEFAULTS.batch_size,
                                       max_tokens=DEFAULTS.batch_tokens)
    return embed.ctrlpost_pass(encoder, captions, DEFAULTS.batch_size,
                                       max_tokens=DEFAULTS.batch_tokens)


def samples_between(log: Path, start: float, end: float) -> dict[str, float]:
    """Mean power (W) and SM clock (MHz) of the samples logged in [start, end] (Unix s)."""
    power, clock = [], []
    for line in log.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3:
            continue
        try:
            stamp, watts, mhz = float(fields[0]), float(fields[1]), float(fields[2])
        except ValueError:
            continue
        if start <= stamp <= end:
            power.append(watts)
            clock.append(mhz)
    if not power:
        return {"samples": 0}
    return {"samples": len(power), "power_w": sum(power) / len(power),
            "power_max_w": max(power), "sm_mhz": sum(clock) / len(clock)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from ctrlpost.hub.tiny import caption_tokenizer

    device = torch.device("cuda")
    tokenizer = caption_tokenizer()
    tokenizer.padding_side = "right"
    captions = embed.make_captions(tokenizer, args.captions, median=64.0, seed=0)
    fp32, _ = embed.build_encoders(embed.T5_11B, device)
    fp16 = embed.cast_copy(fp32, torch.float16)
    del fp32
    encoder = TextEncoder(tokenizer, lean_network(fp16), device, embed.MAX_LENGTH)
    variants = args.variants.split(",")

    log = Path(tempfile.mkdtemp()) / "smi.csv"
    script = ("while true; do echo \"$(date +%s.%N), $(nvidia-smi --query-gpu=power.draw,"
              "clocks.sm --format=csv,noheader,nounits)\"; sleep 0.05; done")
    with log.open("w") as sink:
        logger = subprocess.Popen(["bash", "-c", script], stdout=sink)
    try:
        for name in variants:  # warm-up: compiles each kernel form
            run_pass(name, encoder, captions)
        rows: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for name in variants:
                torch.cuda.synchronize()
                start = time.time()
                seconds, _ = common.timed(lambda n=name: run_pass(n, encoder, captions), device)
                end = time.time()
                time.sleep(0.3)  # the logger's last samples of this pass
                row = {"round": round_, "network": name, "seconds": seconds,
                       "captions_per_s": args.captions / seconds,
                       **samples_between(log, start, end)}
                rows.append(row)
                print(f"round {round_} {name:12} {row['captions_per_s']:7.1f} captions/s  "
                      f"{row.get('power_w', 0):5.0f} W (max {row.get('power_max_w', 0):.0f})  "
                      f"{row.get('sm_mhz', 0):5.0f} MHz", flush=True)
    finally:
        logger.terminate()
    summary = {name: common.median([r["captions_per_s"] for r in rows if r["network"] == name])
               for name in variants}
    print("medians:", {k: round(v, 1) for k, v in summary.items()})
    record = {"benchmark": "embed-power", "device": common.device_name(device),
              "torch": torch.__version__, "date": common.now(),
              "command": "bench/embed_power.py " + " ".join(argv or sys.argv[1:]),
              "rows": rows, "median_captions_per_s": summary}
    out = args.out or RESULTS / f"embed-power-{common.slug(record['device'])}.json"
    print(common.write_json(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
