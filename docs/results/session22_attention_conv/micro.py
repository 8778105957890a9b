"""Throwaway micro-benchmark (session 22): attention's core with the memory-efficient backward against
FlashAttention's; SDPA's forward alone per backend; the 3x3 grid conv through cuDNN against the Triton kernels."""
import json, os, sys
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "session21_backward_kernels")))
import torch, torch.nn as nn, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import vision_mamba as vm
from micro import bench  # noqa: E402  session 21's timing helper (CUDA events, best of 3 rounds)


def flash_backward(q, k, v, scale, grad):
    """Session 21's fused backward (FlashAttention-2), for the comparison."""
    out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, False, False, scale=scale)
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        grad.contiguous(), q, k, v, out, lse, cq, ck, mq, mk, 0.0, False, seed, offset, scale=scale)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


efficient = vm.fused_attention_backward
for B, H, L in [(1024, 3, 64), (1024, 6, 64), (1024, 3, 49)]:
    hd, scale = 64, 0.125
    q, k, v = (torch.randn(B, H, L, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, L, hd, device="cuda", dtype=torch.bfloat16)
    row = dict(B=B, H=H, L=L)
    for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            if backend is None:
                ms = bench(lambda: F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), scale=scale))
            else:
                with sdpa_kernel(backend):
                    ms = bench(lambda: F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), scale=scale))
            row[f"fwd_{backend.name if backend else 'default'}"] = round(ms, 4)
        except Exception as e:  # noqa: BLE001
            row[f"fwd_{backend.name if backend else 'default'}"] = f"unavailable: {str(e)[:60]}"
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    exact = vm.attention_backward_ref(qd.double(), kd.double(), vd.double(), None, scale, go.double())
    for name, fn in (("efficient", efficient), ("flash", flash_backward)):
        grads = fn(qd, kd, vd, scale, go)
        row[f"rel_err_{name}"] = round(max(rel(g, e) for g, e in zip(grads, exact)), 5)
        row[f"bwd_{name}_ms"] = round(bench(lambda: fn(qd, kd, vd, scale, go)), 4)
        vm.fused_attention_backward = fn
        row[f"core_fwd_bwd_{name}_ms"] = round(bench(
            lambda: torch.autograd.grad(vm.attention_core(q, k, v, None, scale), (q, k, v), go)), 4)
    vm.fused_attention_backward = efficient
    print(json.dumps(row), flush=True)

from depthwise_conv_triton import dwconv3x3  # noqa: E402
for B, side, C in [(1024, 8, 768), (1024, 8, 384), (1024, 8, 192), (1024, 7, 768)]:
    conv = nn.Conv2d(C, C, 3, padding=1, groups=C).cuda()
    x = torch.randn(B, side * side, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    go = torch.randn_like(x)
    def cudnn():
        with torch.autocast("cuda", torch.bfloat16):
            out = vm.grid_conv(conv, x, side)
        torch.autograd.grad(out, (x, conv.weight, conv.bias), go)
    def triton():
        out = dwconv3x3(x, conv.weight, conv.bias, side)
        torch.autograd.grad(out, (x, conv.weight, conv.bias), go)
    with torch.autocast("cuda", torch.bfloat16):
        ref = vm.grid_conv(conv, x, side)
    got = dwconv3x3(x, conv.weight, conv.bias, side)
    row = dict(B=B, side=side, C=C, cudnn_fwd_bwd_ms=round(bench(cudnn), 4), triton_fwd_bwd_ms=round(bench(triton), 4),
               rel_diff_fwd=round(rel(got, ref.double()), 5))
    print(json.dumps(row), flush=True)
