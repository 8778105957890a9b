"""Throwaway micro-benchmark: scan backward variants, attention core against SDPA, at the presets' shapes."""
import importlib, sys, os, time, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
import torch, torch.nn.functional as F
import selective_scan_triton as base
import vision_mamba as vm

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
dev = "cuda"


def bench(fn, reps=30, rounds=3):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(rounds):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        for _ in range(reps):
            fn()
        ev[1].record()
        torch.cuda.synchronize()
        best.append(ev[0].elapsed_time(ev[1]) / reps)
    return min(best)


def scan_inputs(B, L, G, E, N, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    u = torch.randn(B, L, G, E, device=dev, generator=g).bfloat16()
    delta = F.softplus(torch.randn(B, L, G, E, device=dev, generator=g) - 2).bfloat16()
    A = -torch.exp(torch.randn(G, E, N, device=dev, generator=g) * 0.5)
    Bm = torch.randn(B, L, G, N, device=dev, generator=g).bfloat16()
    Cm = torch.randn(B, L, G, N, device=dev, generator=g).bfloat16()
    D = torch.randn(G, E, device=dev, generator=g)
    gy = torch.randn(B, L, G, E, device=dev, generator=g)
    return u, delta, A, Bm, Cm, D, gy


def main():
    results = []
    variants = [("base", base, {})]
    for name in sys.argv[1:]:
        variants.append((name, importlib.import_module(name), {}))
    launches = [(32, 1, 2, None), (32, 1, 1, None), (32, 1, 3, None)]
    variant_launches = [(32, 1, 2, None), (16, 1, 2, 128), (32, 1, 2, 168), (16, 1, 1, 128), (32, 1, 1, 168), (16, 1, 2, 168)]
    for shape in [(1024, 64, 2, 192, 16), (1024, 64, 2, 384, 16), (1024, 49, 2, 192, 16)]:
        inputs = scan_inputs(*shape)
        ref = base.scan_backward(*inputs)
        for vname, mod, _ in variants:
            for (be, nw, st, mr) in (launches if vname == "base" else variant_launches):
                mod.BWD_BLOCK_E, mod.BWD_NUM_WARPS, mod.BWD_STAGES = be, nw, st
                if mr: mod.BWD_MAXNREG = mr
                elif vname != "base": mod.BWD_MAXNREG = None
                out = mod.scan_backward(*inputs)
                err = max(((o - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for o, r in zip(out, ref))
                ms = bench(lambda: mod.scan_backward(*inputs))
                row = dict(shape=shape, variant=vname, launch=(be, nw, st, mr), ms=round(ms, 4), max_rel_err=float(f"{err:.2e}"))
                results.append(row); print(json.dumps(row), flush=True)
            mod.BWD_BLOCK_E, mod.BWD_NUM_WARPS, mod.BWD_STAGES = 32, 1, 2
            if vname != 'base': mod.BWD_MAXNREG = None
        fwd_ms = bench(lambda: base.scan_forward(*inputs[:6]))
        print(json.dumps(dict(shape=shape, variant="forward", ms=round(fwd_ms, 4))), flush=True)

    # attention core (fp32 written-out backward) against SDPA's own backward, bf16, fwd+bwd
    for B, H in [(1024, 3), (1024, 6)]:
        L, hd = 64, 64
        q, k, v = (torch.randn(B, H, L, hd, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        go = torch.randn(B, H, L, hd, device=dev, dtype=torch.bfloat16)
        def core():
            out = vm.attention_core(q, k, v, None, hd ** -0.5)
            torch.autograd.grad(out, (q, k, v), go)
        def sdpa():
            out = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)
            torch.autograd.grad(out, (q, k, v), go)
        def core_fwd():
            with torch.no_grad():
                vm.attention_core(q, k, v, None, hd ** -0.5)
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        def core_bwd_only():
            vm.attention_core_backward(qd, kd, vd, None, hd ** -0.5, go)
        def ref_bwd_only():
            vm.attention_backward_ref(qd, kd, vd, None, hd ** -0.5, go)
        for name, fn in [("attention_core fwd+bwd", core), ("sdpa fwd+bwd", sdpa), ("attention_core fwd", core_fwd),
                         ("attention_core_backward (fused where it applies)", core_bwd_only), ("attention_backward_ref", ref_bwd_only)]:
            print(json.dumps(dict(attention=name, B=B, H=H, ms=round(bench(fn), 4))), flush=True)
        c = vm.attention_core(q, k, v, None, hd ** -0.5); gc = torch.autograd.grad(c, (q, k, v), go)
        s = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5); gs = torch.autograd.grad(s, (q, k, v), go)
        exact = vm.attention_backward_ref(qd.double(), kd.double(), vd.double(), None, hd ** -0.5, go.double())
        print("rel err vs fp64 reference: core", [float(f"{((a.double()-e).norm()/e.norm()).item():.2e}") for a, e in zip(gc, exact)],
              "sdpa", [float(f"{((a.double()-e).norm()/e.norm()).item():.2e}") for a, e in zip(gs, exact)],
              "ref in bf16", [float(f"{((a.double()-e).norm()/e.norm()).item():.2e}") for a, e in zip(vm.attention_backward_ref(qd, kd, vd, None, hd ** -0.5, go), exact)])
        print("grad agreement core vs sdpa (max abs diff / max abs):", [float(f"{((a.float()-b.float()).abs().max()/b.float().abs().max()).item():.2e}") for a, b in zip(gc, gs)])



if __name__ == "__main__":
    main()
