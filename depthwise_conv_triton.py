"""The depthwise 3x3 conv over a token grid as Triton kernels, for CUDA: `VISION_MAMBA_CONV=triton`.

The ConvFFN and the 2d SSM conv run a depthwise 3x3 conv (padding 1) over tokens laid out
row-major on a side x side grid, (B, L, C) with L = side * side. cuDNN's channels-last depthwise
kernels took 0.56 ms forward and backward for one ConvFFN conv on an H200 (768 channels, 8x8,
bf16, batch 1024), where reading and writing its tensors once would take about 0.15 ms
(docs/BENCHMARKS.md, session 21). These kernels read each tensor once a pass:
    forward       out[i, c] = bias[c] + sum over the 9 taps of w[c, tap] * x[i + shift(tap), c]
    input grad    the same kernel on the output gradient, taps mirrored (the conv's transpose)
    weight grad   per block of pixels, the 9 sums g[i, c] * x[i + shift(tap), c] and the bias's
                  sum of g, as partial sums that torch adds up (no atomics, deterministic)
Pixels i run over all images at once (i = b * L + p); a tap that falls off the grid reads 0.
All arithmetic in fp32; the output and the input gradient in x's dtype.
Tested against torch's conv on the CPU through TRITON_INTERPRET=1. Not yet timed on a GPU, so
off by default.
"""
import torch
import triton
import triton.language as tl

BLOCK_P = 64  # pixels a program
BLOCK_C = 64  # channels a program
WGRAD_BLOCK_P = 64  # pixels a program of the weight gradient: at 256 ptxas spilled (sm_90, Triton 3.8), at 64 not
NUM_WARPS = 4


@triton.jit
def _neighbours(x_ptr, row_stride, pix, c, valid, mask_c, tap: tl.constexpr, L, side):
    """x at each pixel's tap-th neighbour (taps row-major over the 3x3 window), 0 off the grid: (P, C) fp32."""
    dy: tl.constexpr = tap // 3 - 1
    dx: tl.constexpr = tap % 3 - 1
    p = pix % L
    row, col = p // side + dy, p % side + dx
    inside = valid & (row >= 0) & (row < side) & (col >= 0) & (col < side)
    src = pix + dy * side + dx  # the same image's pixel: never crosses into another image when inside
    return tl.load(x_ptr + src[:, None] * row_stride + c[None, :], mask=inside[:, None] & mask_c[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _conv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, row_stride, total, L, side, C,
                 HAS_BIAS: tl.constexpr, MIRROR: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid, mask_c = pix < total, c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    for tap in tl.static_range(9):
        # mirrored taps: the input gradient, out's gradient spread back to the pixels each output read
        w = tl.load(w_ptr + c * 9 + (8 - tap if MIRROR else tap), mask=mask_c, other=0.0).to(tl.float32)
        acc += _neighbours(x_ptr, row_stride, pix, c, valid, mask_c, tap, L, side) * w[None, :]
    tl.store(out_ptr + pix[:, None] * C + c[None, :], acc, mask=valid[:, None] & mask_c[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, partial_ptr, row_stride, total, L, side, C,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    pix = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid, mask_c = pix < total, c < C
    g = tl.load(g_ptr + pix[:, None] * C + c[None, :], mask=valid[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    for tap in tl.static_range(9):  # partial[pid, tap, c]; row 9 holds the bias's
        neighbours = _neighbours(x_ptr, row_stride, pix, c, valid, mask_c, tap, L, side)
        tl.store(partial_ptr + (pid * 10 + tap) * C + c, tl.sum(g * neighbours, axis=0), mask=mask_c)
    tl.store(partial_ptr + (pid * 10 + 9) * C + c, tl.sum(g, axis=0), mask=mask_c)


def _rows(x):
    """x (B, L, C) with unit channel stride and evenly spaced pixels (a channel slice of a wider tensor
    qualifies: the SSM's half of in_proj), and the spacing; anything else is made contiguous first."""
    if x.stride(2) != 1 or x.stride(0) != x.shape[1] * x.stride(1):
        x = x.contiguous()
    return x, x.stride(1)


def _launch_conv(x, weight, bias, side, mirror):
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    out = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    total = batch * length
    grid = (triton.cdiv(total, BLOCK_P), triton.cdiv(channels, BLOCK_C))
    _conv_kernel[grid](x, weight.contiguous(), weight if bias is None else bias, out, row_stride, total, length, side,
                       channels, HAS_BIAS=bias is not None, MIRROR=mirror, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C,
                       num_warps=NUM_WARPS)
    return out


# Custom operators, as for the scan kernels: torch.compile calls each as one opaque op on tensors
# laid out as in eager mode.
@torch.library.custom_op("vision_mamba::dwconv3x3", mutates_args=())
def dwconv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, side: int) -> torch.Tensor:
    """x (B, L, C) on a side x side grid; weight (C, 1, 3, 3) and bias (C,) of a depthwise Conv2d with padding 1."""
    return _launch_conv(x, weight, bias, side, mirror=False)


@dwconv3x3.register_fake
def _(x, weight, bias, side):
    return x.new_empty(x.shape)


@torch.library.custom_op("vision_mamba::dwconv3x3_backward", mutates_args=())
def dwconv3x3_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for x (x's dtype), weight and bias (fp32)."""
    grad = grad.contiguous()
    grad_x = _launch_conv(grad, weight, None, side, mirror=True)
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    total = batch * length
    blocks = triton.cdiv(total, WGRAD_BLOCK_P)
    partial = torch.empty((blocks, 10, channels), dtype=torch.float32, device=x.device)
    _weight_grad_kernel[(blocks, triton.cdiv(channels, BLOCK_C))](x, grad, partial, row_stride, total, length, side,
                                                                  channels, BLOCK_P=WGRAD_BLOCK_P, BLOCK_C=BLOCK_C,
                                                                  num_warps=NUM_WARPS)
    sums = partial.sum(0)  # (10, C)
    return grad_x, sums[:9].t().reshape(channels, 1, 3, 3).contiguous(), sums[9].clone()


@dwconv3x3_backward.register_fake
def _(grad, x, weight, side):
    return x.new_empty(x.shape), weight.new_empty(weight.shape, dtype=torch.float32), \
        weight.new_empty(weight.shape[0], dtype=torch.float32)


def _save_conv_inputs(ctx, inputs, output):
    x, weight, _, ctx.side = inputs
    ctx.save_for_backward(x, weight)


def _conv_grads(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = dwconv3x3_backward(grad, x, weight, ctx.side)
    return grad_x, grad_w.to(weight.dtype), grad_b.to(weight.dtype), None


dwconv3x3.register_autograd(_conv_grads, setup_context=_save_conv_inputs)
