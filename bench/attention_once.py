"""One layer's packed attention over a few batches of bench/embed.py's caption mix, once each:
the target for a kernel profiler (``ncu``), which needs a short, plain run.

    ncu -k regex:attention_kernel -c 2 --section SpeedOfLight --section Occupancy \\
        python bench/attention_once.py --block-n 16
"""

from __future__ import annotations

import argparse
import sys

import _common as common
import torch

common.ensure_ctrlpost_importable()

import embed  # noqa: E402  (the bench script beside this one: its caption mix)
from ctrlpost.embed.kernels.packed_attention import caption_bounds, packed_attention  # noqa: E402
from ctrlpost.embed.run import length_batches  # noqa: E402
from ctrlpost.recipe import EmbedOptions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block-m", type=int, help="default: the kernel's")
    parser.add_argument("--block-n", type=int, help="default: the kernel's")
    parser.add_argument("--warps", type=int, help="default: the kernel's")
    parser.add_argument("--stages", type=int, help="default: the kernel's")
    parser.add_argument("--batches", type=int, default=3, help="batches from the middle of the mix")
    args = parser.parse_args(argv)

    device = torch.device("cuda")
    lengths = embed.mixed_caption_lengths()
    batches = [[lengths[i] for i in b] for b in
               length_batches(lengths, max_captions=EmbedOptions().batch_size,
                              max_tokens=EmbedOptions().batch_tokens, packed=True)]
    launch = {k: v for k, v in (("block_m", args.block_m), ("block_n", args.block_n),
                                ("warps", args.warps), ("stages", args.stages)) if v is not None}
    middle = len(batches) // 2
    heads, head_dim = embed.T5_11B["num_heads"], embed.T5_11B["d_kv"]
    for batch in batches[middle:middle + args.batches]:
        starts, lens = caption_bounds(batch, device)
        qkv = torch.randn(sum(batch), 3 * heads * head_dim, device=device, dtype=torch.float16)
        bias = torch.randn(heads, 2 * max(batch) - 1, device=device)
        packed_attention(qkv, bias, starts, lens, max_length=max(batch), heads=heads,
                         head_dim=head_dim, **launch)
        torch.cuda.synchronize()
        print(f"batch of {len(batch)} captions, {sum(batch)} tokens, longest {max(batch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
