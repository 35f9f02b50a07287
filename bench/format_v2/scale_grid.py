"""What format v2's coded scales cost: `mlwq quantize` with every group scale on a log grid.

    python -m bench.format_v2.scale_grid --steps-per-octave 16 -- quantize default --bits 3.3 \
        --nsamples 32 --seqlen 512 --tqp-steps 20 --out runs/v2/log16-3.3

Format v1 stores each 64-column group's scale as fp16 (with an 8-bit zero and an 8-bit width:
0.5 bits per weight). A v2 layout can store it as a k-bit code under one fp16 scale per row,
d = S_row * 2^(-code / n) with n steps per octave (8 bits, n = 16: 16 octaves, steps of 4.4 %).
This runs the `mlwq` command line with every scale the quantizers choose (min/max fit, weighted
search, block tuning: `mlwq.grid.round_scale`) rounded to the grid 2^(j / n) and then to fp16, so
the v1 file it exports holds exactly the weights a v2 file of that grid would: llama.cpp measures
the cost of coded scales alone. The grid's offset against a row scale S_row changes nothing in
the relative error, so the grid is the same for all rows here.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mlwq import cli, grid


def log_grid_round_scale(steps_per_octave: int):
    def round_scale(d: torch.Tensor) -> torch.Tensor:
        k = torch.round(torch.log2(d.clamp(min=2.0 ** -24)) * steps_per_octave)
        return torch.exp2(k / steps_per_octave).to(torch.float16).to(torch.float32)
    return round_scale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps-per-octave", type=int, required=True, help="16 for an 8-bit code over 16 octaves")
    p.add_argument("mlwq_args", nargs=argparse.REMAINDER, help="-- then an `mlwq` command line")
    args = p.parse_args(argv)
    rest = args.mlwq_args[1:] if args.mlwq_args[:1] == ["--"] else args.mlwq_args
    grid.round_scale = log_grid_round_scale(args.steps_per_octave)
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
