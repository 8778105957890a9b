"""Session 23, throwaway: the scan kernels with the tokens across threads (parallel scans) against the
sequential chunked kernels, forward and backward apart, at the models' layer shapes. Each variant's outputs
are checked against the sequential kernels'. Median of triton.testing.do_bench (CUDA events)."""
import itertools
import json
import sys

import torch
import triton

sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
import selective_scan_triton as k  # noqa: E402
from tune_scan_kernels import scan_inputs, close  # noqa: E402

VARIANTS = list(itertools.product((False, True), (1024, 2048), (4, 8)))  # transposed tile, tile size, warps
SHAPES = [((1024, 64, 2, 192, 16), VARIANTS), ((1024, 64, 2, 384, 16), VARIANTS), ((1024, 49, 2, 192, 16), VARIANTS),
          ((512, 196, 2, 192, 16), [(False, 2048, 8), (True, 2048, 8)]), ((8, 1024, 1, 64, 16), [(False, 2048, 8)])]
rows = []
for shape, variants in SHAPES:
    inputs, g_y = scan_inputs(*shape, "cuda")
    k.PARALLEL_FWD = k.PARALLEL_BWD = False
    y0, g0 = k.scan_forward(*inputs), k.scan_backward(*inputs, g_y)
    fwd = triton.testing.do_bench(lambda: k.scan_forward(*inputs), rep=200)
    bwd = triton.testing.do_bench(lambda: k.scan_backward(*inputs, g_y), rep=200)
    print(f"{str(shape):>26}  sequential                     fwd {fwd:7.3f}  bwd {bwd:7.3f} ms", flush=True)
    rows.append({"shape": shape, "variant": "sequential", "fwd_ms": fwd, "bwd_ms": bwd})
    k.PARALLEL_FWD = k.PARALLEL_BWD = True
    for transposed, tile, warps in variants:
        k.PARALLEL_TRANSPOSED, k.PARALLEL_TILE, k.PARALLEL_WARPS = transposed, tile, warps
        try:
            y, g = k.scan_forward(*inputs), k.scan_backward(*inputs, g_y)
            agrees = close(y, y0) and all(close(a, b) for a, b in zip(g, g0))
            fwd = triton.testing.do_bench(lambda: k.scan_forward(*inputs), rep=200)
            bwd = triton.testing.do_bench(lambda: k.scan_backward(*inputs, g_y), rep=200)
        except Exception as e:  # noqa: BLE001 (a variant that fails to compile is a row, not the end)
            print(f"{str(shape):>26}  T={int(transposed)} tile {tile:4d} warps {warps}  failed: {e!r:.200}", flush=True)
            continue
        print(f"{str(shape):>26}  T={int(transposed)} tile {tile:4d} warps {warps}   fwd {fwd:7.3f}  bwd {bwd:7.3f} ms  agrees {agrees}", flush=True)
        rows.append({"shape": shape, "variant": f"parallel T={int(transposed)} tile={tile} warps={warps}", "fwd_ms": fwd,
                     "bwd_ms": bwd, "agrees": agrees})
with open(sys.argv[1] if len(sys.argv) > 1 else "micro.jsonl", "w") as f:
    for row in rows:
        f.write(json.dumps({**row, "torch": torch.__version__, "triton": triton.__version__,
                            "gpu": torch.cuda.get_device_name()}) + "\n")
