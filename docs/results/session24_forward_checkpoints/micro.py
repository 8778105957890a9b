"""Session 24's micro-benchmark: the scan kernels before (the backward recomputes its checkpoints in a
forward sweep of its own; commit given as argv[1], read from git) and after (the forward writes them).
Forward and backward of one layer at the toolkit's shapes, medians of triton.testing.do_bench.
Usage: python micro.py OLD_COMMIT OUT.jsonl"""
import json
import os
import subprocess
import sys
import types

import torch
import torch.nn.functional as F
import triton.testing

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)
import selective_scan_triton as new  # noqa: E402


def load_old(commit):
    source = subprocess.run(["git", "show", f"{commit}:selective_scan_triton.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join("/tmp", f"sst_{commit}.py")  # Triton's jit reads the kernels' source from a file
    with open(path, "w") as f:
        f.write(source.replace('"vision_mamba::', '"vision_mamba_old::'))
    module = types.ModuleType("sst_old")
    module.__file__ = path
    exec(compile(source.replace('"vision_mamba::', '"vision_mamba_old::'), path, "exec"), module.__dict__)
    return module


def scan_inputs(B, L, G, E, N):
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(B, L, G, E, device="cuda", generator=g).bfloat16()
    delta = F.softplus(torch.randn(B, L, G, E, device="cuda", generator=g) - 2)
    A = -torch.exp(torch.randn(G, E, N, device="cuda", generator=g) * 0.5)
    Bm = torch.randn(B, L, G, N, device="cuda", generator=g).bfloat16()
    Cm = torch.randn(B, L, G, N, device="cuda", generator=g).bfloat16()
    D = torch.randn(G, E, device="cuda", generator=g)
    g_y = torch.randn(B, L, G, E, device="cuda", generator=g)
    return (u, delta, A, Bm, Cm, D), g_y


def ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


old = load_old(sys.argv[1])
rows = []
for shape in [(1024, 64, 2, 192, 16), (1024, 64, 2, 384, 16), (1024, 49, 2, 192, 16), (128, 64, 2, 192, 16)]:
    inputs, g_y = scan_inputs(*shape)
    y_old, grads_old = old.scan_forward(*inputs), old.scan_backward(*inputs, g_y)
    row = dict(shape=shape, old_forward=ms(lambda: old.scan_forward(*inputs)),
               old_backward=ms(lambda: old.scan_backward(*inputs, g_y)))
    for block_e, stages in [(64, 3), (32, 3), (64, 2), (32, 2)]:  # the forward's launch, now that it writes
        new.BLOCK_E, new.STAGES = block_e, stages
        row[f"new_forward_saving_{block_e}x{stages}"] = ms(lambda: new.scan_forward(*inputs, True))
        row[f"new_forward_inference_{block_e}x{stages}"] = ms(lambda: new.scan_forward(*inputs, False))
    new.BLOCK_E, new.STAGES = 64, 3
    y, checkpoints = new.scan_forward(*inputs, True)
    row["new_backward"] = ms(lambda: new.scan_backward(*inputs, checkpoints, g_y))
    grads = new.scan_backward(*inputs, checkpoints, g_y)
    row["y_equal"] = torch.equal(y, y_old) and torch.equal(new.scan_forward(*inputs, False)[0], y_old)
    row["max_grad_rel_diff"] = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grads, grads_old))
    row["checkpoint_MB"] = round(checkpoints.numel() * 4 / 1e6, 1)
    row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    rows.append(row)
    print(json.dumps(row), flush=True)
with open(sys.argv[2], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
print(f"{'shape':<26}{'old fwd+bwd':>12}{'new fwd+bwd':>12}{'old bwd':>9}{'new bwd':>9}{'old fwd':>9}{'new fwd':>9}{'inf fwd':>9}")
for r in rows:
    o = r["old_forward"] + r["old_backward"]
    n = r["new_forward_saving_64x3"] + r["new_backward"]
    print(f"{str(tuple(r['shape'])):<26}{o:>12.3f}{n:>12.3f}{r['old_backward']:>9.3f}{r['new_backward']:>9.3f}"
          f"{r['old_forward']:>9.3f}{r['new_forward_saving_64x3']:>9.3f}{r['new_forward_inference_64x3']:>9.3f}")
