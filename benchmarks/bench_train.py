"""End-to-end training throughput: data + augmentation + step, on random data shaped like a preset's dataset.

    python benchmarks/bench_train.py                                   # CPU, small defaults
    python benchmarks/bench_train.py --device cuda --sizes tiny small --block_types hybrid ssm attention \\
        --batch_sizes 256 512 1024 --json out.jsonl

The data are 50,000 random uint8 images shaped like the --config preset's dataset (default
cifar10: 32x32x3, 10 labels), fed through the project's own loader
(`data_pipeline.create_data_loaders`: GPU-resident on CUDA, with the preset's crop, flip, erasing
and normalisation per batch) into the step the training script runs, with the preset's settings:
MixUp/CutMix, then `train_vision_mamba.train_step` (bf16 autocast on CUDA, label-smoothed
cross-entropy, gradient clipping, fused AdamW, EMA update). --compile as training.compile
(default: the preset's, where auto means everything but attention on CUDA, nothing on the CPU);
--cudagraphs / --no-cudagraphs as training.cudagraphs (default: the preset's); --no-cudnn_benchmark
as a deterministic run (cuDNN's heuristic pick of convolution algorithms instead of the timed one); --triton_causal_conv
as vision_mamba.TRITON_CAUSAL_CONV (the SSM's causal conv1d as depthwise_conv_triton's kernels on CUDA).

Reported per configuration: img/s over the timed steps, step time, the part of it spent producing
batches (timed separately over the same number of batches), model FLOP utilisation (FLOPs of a
step as torch.utils.flop_counter counts them, over step time, against --peak_tflops), peak GPU
memory (on a CPU the process's peak resident memory so far, beside the training script's estimate
of a step, which refuses CPU runs that would not fit) and compile time (the first step). Prints a
table and appends JSON rows to --json.
"""
import argparse
import collections
import itertools
import json
import os
import sys
import time
import warnings
from unittest import mock

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_pipeline  # noqa: E402
from config import COMPILE_MODES, ConfigError, apply_overrides, get_preset  # noqa: E402
from train_vision_mamba import (UsageError, amp_dtype, build_model, check_backend_env, compile_model,  # noqa: E402
                                configure_cuda_math, cpu_step_memory, cudagraphs_enabled, make_step_parts, resolve_compile_mode,
                                set_overrides, train_step)
import vision_mamba  # noqa: E402
from vision_mamba import BLOCK_TYPES, MODEL_SIZES, SSM_CONVS, STEMS, count_parameters  # noqa: E402

from bench_model import block_pattern, peak_memory, synchronize  # noqa: E402  (this folder is on sys.path when a script runs)


# presets whose dataset the benchmark can imitate with random arrays of the same shape
BENCH_PRESETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "svhn")


def synthetic_arrays(info, num_train, seed=0):
    """Random uint8 images and labels shaped like the dataset of `info` (a DatasetInfo)."""
    rng = np.random.default_rng(seed)
    shape = (info.in_chans, info.img_size, info.img_size)

    def split(n):
        return data_pipeline.ArraySplit(torch.from_numpy(rng.integers(0, 256, (n, *shape), dtype=np.uint8)),
                                        torch.from_numpy(rng.integers(0, info.num_classes, n)).long())
    return split(num_train), split(1000), [str(i) for i in range(info.num_classes)]


def bench_config(args, device, size, block_type, batch_size):
    """The preset with --set's overrides and this row's size, blocks and batch (ConfigError if invalid)."""
    overrides = {"model.model_size": size, "model.block_type": block_type, "data.batch_size": batch_size,
                 "training.device": device.type, "data.val_fraction": 0.02}
    if args.stem:
        overrides["model.stem"] = args.stem
    if args.mlp_conv:
        overrides["model.mlp_conv"] = args.mlp_conv == "on"
    if args.ssm_conv:
        overrides["model.ssm_conv"] = args.ssm_conv
    return apply_overrides(get_preset(args.config), {**args.overrides, **overrides})


def bench(args, device, size, block_type, batch_size):
    config = bench_config(args, device, size, block_type, batch_size)
    info = data_pipeline.dataset_info(config)
    with mock.patch.object(data_pipeline, "load_arrays", lambda cfg: synthetic_arrays(info, args.num_images)):
        data = data_pipeline.create_data_loaders(config, device)
    torch.manual_seed(0)
    model = build_model(config, data.info).to(device)
    t, cfg = config.training, config.data
    dtype = amp_dtype(config, device)
    criterion, optimizer, scaler, ema = make_step_parts(model, t, t.lr, device, dtype)
    mixing = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
    step_index = itertools.count()
    compile_mode = resolve_compile_mode(args.compile or config.training.compile, device)
    cudagraphs = cudagraphs_enabled(t.cudagraphs if args.cudagraphs is None else args.cudagraphs, compile_mode, device)

    def step(images, labels, net):  # the training loop's step: transfer, MixUp/CutMix, train_step
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets = labels
        if mixing:
            images, targets = data_pipeline.mix_batch(images, labels, data.info.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha,
                                        t.seed, 0, next(step_index), cfg.mix_prob)
        train_step(net, model, images, targets, criterion, optimizer, scaler, ema, dtype, t.grad_clip, cudagraphs,
                   t.sam_rho if t.sam_epochs else 0.0)  # --set training.sam_epochs=1 times SAM's step

    batches = endless_batches(data.train)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # FLOPs of one step as torch's FlopCounterMode counts them (matmuls, convolutions, attention;
    # forward and backward), on the model before any compilation; the scan's recurrence is not counted
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        step(*next(batches), model)
    flops_per_step = counter.get_total_flops()
    step_model = compile_model(model, compile_mode, cudagraphs)
    start = time.perf_counter()
    step(*next(batches), step_model)
    synchronize(device)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step(*next(batches), step_model)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(*next(batches), step_model)
    synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps

    syncs = None
    if args.sync_debug and device.type == "cuda":  # where the host waits for the GPU inside a step
        syncs = count_syncs(lambda: step(*next(batches), step_model), SYNC_CHECKED_STEPS)
        print(f"# {size} {block_type} batch {batch_size}: {sum(syncs.values()) / SYNC_CHECKED_STEPS:g} host-GPU "
              f"synchronisations per step" + "".join(f"\n#   {n / SYNC_CHECKED_STEPS:g}x {where}" for where, n in syncs.items()))
    kernel_ms = None
    if args.profile:  # where the step's time goes, kernel by kernel
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(PROFILED_STEPS):
                step(*next(batches), step_model)
            synchronize(device)
        sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"# {size} {block_type} batch {batch_size}: {PROFILED_STEPS} steps, top kernels by {sort_key}")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=30, max_name_column_width=70))
        print_matrix_products(prof, device)
        if device.type == "cuda":
            # GPU kernel time per step against the unprofiled step time: well under 100% means the GPU
            # waits on the host (Python, launches, synchronisation), which CUDA graphs or fewer kernels would cut
            kernel_ms = gpu_kernel_us(prof) / PROFILED_STEPS / 1e3
            print(f"# GPU kernel time {kernel_ms:.1f} ms per step = {kernel_ms / (step_s * 1e3):.0%} of the {step_s * 1e3:.1f} ms step")

    batches = endless_batches(data.train)  # the data path alone, same number of batches
    start = time.perf_counter()
    for _ in range(args.steps):
        images, labels = next(batches)
        images.to(device, non_blocking=True)
    synchronize(device)
    data_s = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak, estimate = torch.cuda.max_memory_allocated(device) / 2**20, None
    else:  # the training script's estimate beside what the process reached (its high-water mark, so rows are cumulative)
        per_image, fixed = cpu_step_memory(model, data.info, dtype)
        peak, estimate = peak_rss_mib(), round((per_image * batch_size + fixed) / 2**20)
    return {"kind": "train_e2e", "config": args.config, "size": size, "block_type": block_type, "batch_size": batch_size,
            "params_m": round(count_parameters(model) / 1e6, 2), "img_per_s": round(batch_size / step_s, 1),
            "step_ms": round(step_s * 1e3, 2), "data_ms": round(data_s * 1e3, 3),
            "data_fraction": round(data_s / step_s, 4), "gflop_per_step": round(flops_per_step / 1e9, 1),
            "mfu": float(f"{flops_per_step / step_s / (args.peak_tflops * 1e12):.4g}"), "peak_tflops": args.peak_tflops, "compile_s": round(compile_s, 1), "compile_mode": compile_mode,
            "cudagraphs": cudagraphs, "cudnn_benchmark": torch.backends.cudnn.benchmark, "overrides": args.overrides,
            "syncs_per_step": None if syncs is None else sum(syncs.values()) / SYNC_CHECKED_STEPS,
            "gpu_kernel_ms": None if kernel_ms is None else round(kernel_ms, 2),
            "ema": ema is not None, "mixing": mixing, "stem": config.model.stem, "stem_width": config.model.stem_width,
            "mlp_conv": config.model.mlp_conv, "ssm_conv": config.model.ssm_conv, "conv_backend": vision_mamba.CONV_BACKEND,
            "triton_causal_conv": vision_mamba.TRITON_CAUSAL_CONV,
            "peak_mem_mib": peak, "cpu_step_estimate_mib": estimate, "resident": data.resident, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "date": time.strftime("%Y-%m-%d")}


def cpu_peak(row):
    rss = "n/a" if row["peak_mem_mib"] is None else f"{row['peak_mem_mib'] / 1024:.1f} GiB"
    return f"RSS {rss} (the training script's estimate: {row['cpu_step_estimate_mib'] / 1024:.1f} GiB)"


def peak_rss_mib():
    """This process's peak resident memory so far in MiB (None where the OS does not say: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


PROFILED_STEPS = 3
SYNC_CHECKED_STEPS = 3


def count_syncs(run_step, steps):
    """{'file:line': count} of the host-GPU synchronisations (torch.cuda's sync debug mode) over `steps` calls."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                run_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def print_matrix_products(prof, device, rows=12):
    """The step's matrix products by input shapes, slowest first: a weight's gradient sums over all B * L tokens
    into an output as small as the weight, which can leave the GPU's matrix units mostly idle."""
    products = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::bmm", "aten::addmm")]
    time_us = (lambda e: e.device_time_total) if device.type == "cuda" else (lambda e: e.cpu_time_total)
    print(f"# matrix products by input shapes ({'GPU' if device.type == 'cuda' else 'CPU'} time per call, calls in "
          f"{PROFILED_STEPS} steps)")
    for e in sorted(products, key=time_us, reverse=True)[:rows]:
        shapes = " x ".join(str(tuple(shape)) for shape in e.input_shapes if shape)
        print(f"#   {e.key:12s} {time_us(e) / e.count:9.1f} us  {e.count:4d}x  {shapes}")


def gpu_kernel_us(prof):
    """Microseconds the GPU spent in kernels and copies over a profile (device time of events that ran on it).
    Not the GPU-side annotations that span kernels already counted: a compiled graph's "## Call CompiledFxGraph"
    rows, which made the figure read 169% of the step (session 26)."""
    return sum(event.self_device_time_total for event in prof.key_averages()
               if event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, "is_user_annotation", False))


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, **_):
    """FLOPs of aten.convolution_backward: each gradient asked for (input, weight) is one convolution
    as large as the forward. torch's own formula (2.11 to 2.14) ignores groups in the weight gradient,
    which counted the ConvFFN's depthwise 3x3 convs (groups = channels) 768 times too high."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def endless_batches(loader):
    """Batches across epoch boundaries, as a long run sees them: warm-up plus timed steps may
    outnumber one epoch's batches (49 at batch 1024)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader.batches()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(MODEL_SIZES))
    parser.add_argument("--block_types", nargs="+", default=list(BLOCK_TYPES), type=block_pattern,
                        help=f"each one of {BLOCK_TYPES} or a per-layer pattern such as ssm,attention")
    parser.add_argument("--stem", choices=STEMS, default=None, help="default: the preset's")
    parser.add_argument("--mlp_conv", choices=("on", "off"), default=None, help="the MLPs' depthwise conv (default: the preset's)")
    parser.add_argument("--ssm_conv", choices=SSM_CONVS, default=None, help="the SSM layers' conv (default: the preset's)")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=None, help="default: 256 512 1024 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--config", choices=BENCH_PRESETS, default="cifar10",
                        help="the preset whose model, augmentation and step are timed, on random data of its dataset's shape")
    parser.add_argument("--num_images", type=int, default=50_000)
    parser.add_argument("--compile", choices=COMPILE_MODES, default=None,
                        help="as training.compile (default: the preset's; auto is on (the whole model) on CUDA, off on the CPU)")
    parser.add_argument("--cudagraphs", action=argparse.BooleanOptionalAction, default=None,
                        help="as training.cudagraphs: the compiled graphs replayed as CUDA graphs (CUDA only; "
                             "default: the preset's, on for cifar10 and cifar100)")
    parser.add_argument("--cudnn_benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="cuDNN times convolution algorithms on first use, as training does unless deterministic")
    parser.add_argument("--triton_causal_conv", action=argparse.BooleanOptionalAction, default=None,
                        help="the SSM layers' causal conv1d through depthwise_conv_triton's kernels on CUDA "
                             "(vision_mamba.TRITON_CAUSAL_CONV; default: its value, on since session 31)")
    parser.add_argument("--peak_tflops", type=float, default=790.0,
                        help="the GPU's bf16 matmul rate the MFU is measured against (H200: about 790, measured)")
    parser.add_argument("--profile", action="store_true", help="also print the top kernels of 3 steps (torch.profiler)")
    parser.add_argument("--sync_debug", action="store_true",
                        help="CUDA: count the host-GPU synchronisations of 3 steps and say where they happen")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="any other config value, as in train_vision_mamba.py (e.g. --set model.expand=2)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_sizes = args.batch_sizes or ([256, 512, 1024] if cuda else [32])
    try:  # every row's config checked before the first one runs
        check_backend_env()  # the rows say how the convs ran: VISION_MAMBA_CONV must be a known value
        args.overrides = set_overrides(args.set)
        for row in itertools.product(args.sizes, args.block_types, args.batch_sizes):
            bench_config(args, device, *row)
    except (UsageError, ConfigError) as e:
        parser.error(str(e))
    args.steps = args.steps or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if cuda:
        configure_cuda_math(cudnn_benchmark=args.cudnn_benchmark)
    if args.triton_causal_conv is not None:
        vision_mamba.TRITON_CAUSAL_CONV = args.triton_causal_conv
    rows = []
    for size in args.sizes:
        for block_type in args.block_types:
            for batch_size in args.batch_sizes:
                row = bench(args, device, size, block_type, batch_size)
                rows.append(row)
                print(f"{size:<6} {block_type:<10} batch {batch_size:<5} {row['img_per_s']:10.1f} img/s  step {row['step_ms']:8.2f} ms  "
                      f"data {row['data_ms']:7.3f} ms ({row['data_fraction']:.1%})  MFU {row['mfu']:.1%}  compile {row['compile_s']:.1f}s  "
                      f"peak {cpu_peak(row) if row['cpu_step_estimate_mib'] is not None else peak_memory(row['peak_mem_mib'])}", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
