"""Time the fused Triton scan kernels (forward and backward separately) under launch variants:
channels per program (BLOCK_E), warps per program, pipelining depth of the token loop, and the
backward's cap on registers per thread (--maxnreg; 0: none, ptxas takes what it likes). The
defaults in selective_scan_triton.py (the forward's and the backward's apart) were chosen from
this script's output, and session 21's throwaway variants, on an H200. The forward is timed as
training runs it, writing the backward's checkpoints.

    python benchmarks/tune_scan_kernels.py                        # CUDA: the two shapes below, all variants
    python benchmarks/tune_scan_kernels.py --shapes 1024,64,2,192,16 --block_e 16 32 --warps 1 --stages 1 2 --maxnreg 0 128 168

Shapes are B,L,G,E,N: 256,64,1,384,16 is the issue's benchmark shape (one direction), and
512,64,2,192,16 is one layer of hybrid-tiny at batch 512 (both directions). Every variant's
results are checked against the first variant's. On a CPU it runs only under TRITON_INTERPRET=1
(slow: use a tiny shape).
"""
import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import selective_scan_triton as kernels  # noqa: E402

from bench_model import timed  # noqa: E402  (this folder is on sys.path when a script runs)


def scan_inputs(batch, length, groups, inner, d_state, device):
    gen = torch.Generator(device=device).manual_seed(0)
    low = dict(device=device, dtype=torch.bfloat16)
    u = torch.randn(batch, length, groups, inner, generator=gen, device=device).to(torch.bfloat16)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, groups, inner, generator=gen, device=device))
    A = -torch.arange(1, d_state + 1, device=device, dtype=torch.float32).repeat(groups, inner, 1)
    Bm = torch.randn(batch, length, groups, d_state, generator=gen, device=device).to(**low)
    Cm = torch.randn(batch, length, groups, d_state, generator=gen, device=device).to(**low)
    D = torch.ones(groups, inner, device=device)
    g_y = torch.randn(batch, length, groups, inner, generator=gen, device=device)
    return kernels.to_operator_layout(u, delta, A, Bm, Cm, D), g_y.flatten(2)  # the operators' 3-d layout


def close(a, b):
    return bool(((a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-6).item())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["256,64,1,384,16", "512,64,2,192,16"])
    parser.add_argument("--block_e", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--warps", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--maxnreg", nargs="+", type=int, default=[kernels.BWD_MAXNREG or 0],
                        help="the backward's register caps to try (0: no cap; default: the kernel's own)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    defaults = (kernels.BLOCK_E, kernels.NUM_WARPS, kernels.STAGES, kernels.BWD_BLOCK_E, kernels.BWD_NUM_WARPS,
                kernels.BWD_STAGES, kernels.BWD_MAXNREG)
    for shape_text in args.shapes:
        shape = tuple(int(v) for v in shape_text.split(","))
        inputs, g_y = scan_inputs(*shape, device)
        reference = None
        for block_e, warps, stages, maxnreg in itertools.product(args.block_e, args.warps, args.stages, args.maxnreg):
            # each kernel has its own launch shape; both take the variant, and their times are read apart
            kernels.BLOCK_E, kernels.NUM_WARPS, kernels.STAGES = block_e, warps, stages
            kernels.BWD_BLOCK_E, kernels.BWD_NUM_WARPS, kernels.BWD_STAGES = block_e, warps, stages
            kernels.BWD_MAXNREG = maxnreg or None
            y, checkpoints = kernels.scan_forward(*inputs, True)
            grads = kernels.scan_backward(*inputs, checkpoints, g_y)
            reference = reference or (y, grads)
            agrees = close(y, reference[0]) and all(close(g, r) for g, r in zip(grads, reference[1]))
            # one warm-up call compiles the variant; then the median of args.iters calls
            fwd = timed(lambda: kernels.scan_forward(*inputs, True), device, 1, args.iters) * 1e3
            bwd = timed(lambda: kernels.scan_backward(*inputs, checkpoints, g_y), device, 1, args.iters) * 1e3
            row = {"kind": "scan_kernels", "shape_BLGEN": shape, "block_e": block_e, "warps": warps, "stages": stages,
                   "bwd_maxnreg": maxnreg or None,
                   "fwd_ms": round(fwd, 4), "bwd_ms": round(bwd, 4), "agrees": agrees, "torch": torch.__version__,
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                   "date": time.strftime("%Y-%m-%d")}
            print(f"{shape_text:>16}  BLOCK_E {block_e:3d}  warps {warps}  stages {stages}  bwd regs {maxnreg or '-':>3}  fwd {fwd:8.3f} ms  "
                  f"bwd {bwd:8.3f} ms  total {fwd + bwd:8.3f} ms  agrees {agrees}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    (kernels.BLOCK_E, kernels.NUM_WARPS, kernels.STAGES, kernels.BWD_BLOCK_E, kernels.BWD_NUM_WARPS,
     kernels.BWD_STAGES, kernels.BWD_MAXNREG) = defaults


if __name__ == "__main__":
    main()
