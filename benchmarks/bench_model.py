"""Model and selective-scan speed: training throughput per size and block type, and the scan alone.

    python benchmarks/bench_model.py                          # CPU, small defaults
    python benchmarks/bench_model.py --device cuda --dtype bf16 --compile --batch_size 512 \\
        --sizes tiny small --block_types hybrid ssm attention --json out.jsonl    # --cudagraphs: replayed

Prints a table and appends JSON rows (one per measurement) to --json.
Train throughput = forward + backward + AdamW step, images per second, after warm-up.
The scan rows time forward + backward of one direction (G=1) at --scan_shape B D L N.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vision_mamba import (MODEL_SIZES, BLOCK_TYPES, SSM_CONVS, STEMS, count_parameters, create_model, parse_block_pattern,  # noqa: E402
                          selective_scan, selective_scan_ref)
from train_vision_mamba import compile_model, configure_cuda_math  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def block_pattern(text):
    """argparse type: one of BLOCK_TYPES or a per-layer pattern such as ssm,attention."""
    try:
        parse_block_pattern(text, depth=len(text.split(",")))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def timed(fn, device, warmup, iters):
    """Median seconds per call of fn, after warm-up."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_train(args, device, size, block_type):
    torch.manual_seed(0)
    model = create_model(size, num_classes=10, img_size=args.img_size, in_chans=3, block_type=block_type, stem=args.stem,
                         mlp_conv=args.mlp_conv, ssm_conv=args.ssm_conv).to(device)
    params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    # --compile: the whole model, as training.compile=on (CUDA graphs asked for as training asks for them)
    step_model = compile_model(model, "on" if args.compile else "off", args.cudagraphs)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    dtype = DTYPES[args.dtype]

    def step():
        if args.cudagraphs:  # the last step's graph outputs are done with: a replay may overwrite them
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    synchronize(device)
    first_step_s = time.perf_counter() - start
    seconds = timed(step, device, args.warmup, args.iters)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"kind": "train", "size": size, "block_type": block_type, "stem": args.stem, "mlp_conv": args.mlp_conv,
            "ssm_conv": args.ssm_conv, "batch_size": args.batch_size, "cudagraphs": args.cudagraphs and device.type == "cuda",
            "params_m": round(params / 1e6, 2), "img_per_s": round(args.batch_size / seconds, 1),
            "step_ms": round(seconds * 1e3, 2), "first_step_s": round(first_step_s, 2), "peak_mem_mib": peak}


def bench_scan(args, device, name, scan):
    batch, inner, length, d_state = args.scan_shape
    dtype = DTYPES[args.dtype] or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)

    def make(*shape, positive=False):
        t = torch.randn(*shape, generator=gen)
        t = torch.nn.functional.softplus(t - 3) if positive else t
        return t.to(device=device, dtype=dtype).requires_grad_()

    u, delta = make(batch, length, 1, inner), make(batch, length, 1, inner, positive=True)
    Bm, Cm = make(batch, length, 1, d_state), make(batch, length, 1, d_state)
    A = (-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(1, inner, 1)).to(device).requires_grad_()
    D = torch.ones(1, inner, device=device, requires_grad=True)
    fn = torch.compile(scan) if args.compile and name == "fast" else scan

    def step():
        y = fn(u, delta, A, Bm, Cm, D)
        y.sum().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, args.warmup, args.iters if name == "fast" else max(3, args.iters // 4))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"kind": "scan", "impl": name, "shape_BDLN": args.scan_shape, "dtype": args.dtype,
            "fwd_bwd_ms": round(seconds * 1e3, 3), "peak_mem_mib": peak}


def peak_memory(mib):
    return "n/a (CPU)" if mib is None else f"{mib / 1024:.1f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(MODEL_SIZES))
    parser.add_argument("--block_types", nargs="+", default=list(BLOCK_TYPES), type=block_pattern,
                        help=f"each one of {BLOCK_TYPES} or a per-layer pattern such as ssm,attention")
    parser.add_argument("--stem", choices=STEMS, default="conv", help="the model's stem (default: conv, create_model's)")
    parser.add_argument("--mlp_conv", action="store_true", help="a depthwise 3x3 conv in every MLP (model.mlp_conv)")
    parser.add_argument("--ssm_conv", choices=SSM_CONVS, default="1d", help="the SSM layers' conv (model.ssm_conv; default: 1d)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 512 on CUDA, 32 on CPU")
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="with --compile: replay the compiled model as CUDA graphs (reduce-overhead mode; CUDA only)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--scan_shape", type=int, nargs=4, default=None, metavar=("B", "D", "L", "N"),
                        help="default: 256 384 64 16 on CUDA, 32 384 64 16 on CPU")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_scan", action="store_true")
    parser.add_argument("--json", default=None, help="append JSON rows to this file")
    args = parser.parse_args()
    if args.cudagraphs and not args.compile:
        parser.error("--cudagraphs replays compiled graphs: add --compile")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (512 if cuda else 32)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.iters = args.iters or (30 if cuda else 5)
    args.scan_shape = args.scan_shape or ([256, 384, 64, 16] if cuda else [32, 384, 64, 16])
    if cuda:
        configure_cuda_math()

    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "compile": args.compile, "date": time.strftime("%Y-%m-%d")}
    rows = []
    if not args.skip_scan:
        rows += [bench_scan(args, device, name, fn) for name, fn in (("fast", selective_scan), ("reference", selective_scan_ref))]
    if not args.skip_train:
        rows += [bench_train(args, device, size, bt) for size in args.sizes for bt in args.block_types]
    for row in rows:
        row.update(env)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    print(f"# {env['device']}, torch {env['torch']}, dtype {args.dtype}, compile {args.compile}")
    for row in rows:
        if row["kind"] == "scan":
            print(f"scan  {row['impl']:<10} B,D,L,N={row['shape_BDLN']}  {row['fwd_bwd_ms']:9.3f} ms fwd+bwd  peak {peak_memory(row['peak_mem_mib'])}")
    scans = {r["impl"]: r["fwd_bwd_ms"] for r in rows if r["kind"] == "scan"}
    if len(scans) == 2:
        print(f"scan  speed-up of fast over reference: {scans['reference'] / scans['fast']:.2f}x")
    for row in rows:
        if row["kind"] == "train":
            print(f"train {row['size']:<6} {row['block_type']:<14} {row['stem']:<6} batch {row['batch_size']:<5} {row['params_m']:7.2f}M params "
                  f"{row['img_per_s']:10.1f} img/s  {row['step_ms']:8.2f} ms/step  first step {row['first_step_s']:.1f}s  peak {peak_memory(row['peak_mem_mib'])}")


if __name__ == "__main__":
    main()
