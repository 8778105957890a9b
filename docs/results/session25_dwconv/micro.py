"""Session 25, one depthwise 3x3 grid conv forward and forward + backward on the GPU: cuDNN (as the model
runs it: channels-last views of (B, L, C) tokens, bf16 autocast), PyTorch's native depthwise kernel (cuDNN
off), and depthwise_conv_triton at several launch shapes. Medians of triton.testing.do_bench, ms; the error is
the worst relative error of out, grad_x, grad_w against an fp64 conv."""
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, ".")
import depthwise_conv_triton as dw  # noqa: E402


def aten_conv(x, w, b, side):
    grid = x.unflatten(1, (side, side)).permute(0, 3, 1, 2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return F.conv2d(grid, w, b, padding=1, groups=w.shape[0]).permute(0, 2, 3, 1).flatten(1, 2)


def triton_conv(x, w, b, side):
    return dw.dwconv3x3(x, w, b, side)


def rel(a, r):
    return float((a.detach().double() - r).norm() / r.norm())


def case(batch, side, channels, strided, conv):
    L = side * side
    wide = torch.randn(batch, L, 2 * channels, device="cuda", dtype=torch.bfloat16)
    x = (wide[..., :channels] if strided else wide[..., :channels].contiguous()).requires_grad_()
    w = (torch.randn(channels, 1, 3, 3, device="cuda") / 3).requires_grad_()
    b = torch.randn(channels, device="cuda").requires_grad_()
    g = torch.randn(batch, L, channels, device="cuda", dtype=torch.bfloat16)
    out = conv(x, w, b, side)
    grads = torch.autograd.grad(out, (x, w, b), g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(x64.unflatten(1, (side, side)).permute(0, 3, 1, 2), w64, b64, padding=1, groups=channels)
    ref = ref.permute(0, 2, 3, 1).flatten(1, 2)
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    err = max(rel(out, ref), *(rel(a, r) for a, r in zip(grads, ref_grads)))

    def fwd():
        with torch.no_grad():
            conv(x, w, b, side)

    def fwd_bwd():
        torch.autograd.grad(conv(x, w, b, side), (x, w, b), g)

    return triton.testing.do_bench(fwd), triton.testing.do_bench(fwd_bwd), err


SHAPES = [(1024, 8, 768, False), (1024, 8, 192, True), (1024, 7, 768, False)]
# call 3: the forward kernel at its call-2 best (BLOCK_P 32, BLOCK_C 128, 4 warps) for the forward and the mirrored
# input gradient; the weight gradient by cuDNN or by _dwconv_wgrad_kernel at these launch shapes
WGRADS = [(16, 64, 4, 2, 8), (16, 64, 4, 1, 8), (8, 64, 2, 2, 8), (16, 64, 4, 2, 4), (16, 64, 4, 2, 16),
          (8, 64, 2, 2, 16), (16, 64, 4, 3, 8)]  # BLOCK_P, BLOCK_C, warps, stages, programs per SM
print("shape B,side,C,strided | variant | fwd ms | fwd+bwd ms | bwd ms | rel err")


def show(shape, name, timing):
    fwd, fwd_bwd, err = timing
    print(shape, name, "%.4f %.4f %.4f %.2g" % (fwd, fwd_bwd, fwd_bwd - fwd, err), flush=True)


for shape in SHAPES:
    show(shape, "cudnn", case(*shape, aten_conv))
    for dw.BACKWARD in ("cudnn", "cudnn_wgrad"):
        show(shape, "triton, backward " + dw.BACKWARD, case(*shape, triton_conv))
    dw.BACKWARD = "triton"
    for dw.WGRAD_BLOCK_P, dw.WGRAD_BLOCK_C, dw.WGRAD_NUM_WARPS, dw.WGRAD_STAGES, dw.WGRAD_PROGRAMS_PER_SM in WGRADS:
        show(shape, "triton, wgrad P%d C%d w%d s%d ps%d" % (dw.WGRAD_BLOCK_P, dw.WGRAD_BLOCK_C, dw.WGRAD_NUM_WARPS,
                                                        dw.WGRAD_STAGES, dw.WGRAD_PROGRAMS_PER_SM), case(*shape, triton_conv))
