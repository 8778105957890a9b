"""Throwaway: the scan backward as committed against the session-20 launch; SDPA backends timed one by one."""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import selective_scan_triton as now
import sst_mr as before  # the session-20 kernel (chunks of 4), launch set below
import vision_mamba as vm
from micro import bench, scan_inputs  # noqa: E402

for shape in [(1024, 64, 2, 192, 16), (1024, 64, 2, 384, 16), (1024, 49, 2, 192, 16)]:
    inputs = scan_inputs(*shape)
    before.BWD_BLOCK_E, before.BWD_NUM_WARPS, before.BWD_STAGES, before.BWD_MAXNREG = 32, 1, 1, None
    ref = before.scan_backward(*inputs)
    out = now.scan_backward(*inputs)
    err = max(((o - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for o, r in zip(out, ref))
    t_before = bench(lambda: before.scan_backward(*inputs))
    t_now = bench(lambda: now.scan_backward(*inputs))
    print(json.dumps(dict(shape=shape, session20_ms=round(t_before, 4), now_ms=round(t_now, 4), max_rel_diff=float(f"{err:.2e}"))), flush=True)

for B, H in [(1024, 3), (1024, 6)]:
    L, hd = 64, 64
    q, k, v = (torch.randn(B, H, L, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, L, hd, device="cuda", dtype=torch.bfloat16)
    def sdpa():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5), (q, k, v), go)
    def core():
        torch.autograd.grad(vm.attention_core(q, k, v, None, hd ** -0.5), (q, k, v), go)
    row = dict(B=B, H=H, default_sdpa_ms=round(bench(sdpa), 4), attention_core_ms=round(bench(core), 4))
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                row[backend.name] = round(bench(sdpa), 4)
        except Exception as e:  # noqa: BLE001  a backend this build or shape lacks
            row[backend.name] = f"unavailable: {str(e)[:80]}"
    print(json.dumps(row), flush=True)
