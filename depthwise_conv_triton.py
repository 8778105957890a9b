"""The depthwise 3x3 conv over a token grid as Triton kernels, for CUDA: the grid convs' default
path there (`vision_mamba.grid_conv`; `VISION_MAMBA_CONV=aten` gives cuDNN's instead). At the end of
the file, the SSM's causal conv1d the same way (`vision_mamba.causal_conv`, on since session 31: 15% off a training step).

The ConvFFN and the 2d SSM conv run a depthwise 3x3 conv (padding 1) over tokens laid out
row-major on a side x side grid, (B, L, C) with L = side * side, channels innermost:
    forward      out[i, c] = bias[c] + sum over the 9 taps of w[c, tap] * x[i + shift(tap), c]
    input grad   the same kernel on the output gradient g, taps mirrored (the conv's transpose)
    weight grad  grad_w[c, tap] = sum over i of g[i, c] * x[i + shift(tap), c]; grad_b[c] = sum of g
Pixels i run over all images at once (i = b * L + p); a tap that falls off its image's grid reads 0,
and the 9 neighbours of a block of pixels come from the L1 cache, not from memory. The weight
gradient's programs each loop over many pixel blocks, add each tap's products elementwise into a tile
of their own and sum it over pixels once at the end (no reduction inside the loop), and torch adds up
the programs' partial sums: no atomics, deterministic. All arithmetic in fp32; out and grad_x in x's
dtype, the weight's and bias's gradients in fp32.
On an H200 (bf16, batch 1024, 768 channels on 8x8, one ConvFFN conv) the forward took 0.11 ms against
cuDNN's 0.24 (docs/BENCHMARKS.md, session 25); the backward alone timed 0.55 ms against cuDNN's 0.38 in
the same call (0.53-0.60 in others), yet the training step ran fastest all-Triton: gated hybrid-tiny's
2.4-3.1% faster than with cuDNN's convs, 3.6-5.0% faster than the Triton forward with cuDNN's weight
gradient or whole backward. Earlier layouts that lost to cuDNN and were dropped: one reduction over
pixels per 64-pixel block (session 21, and this session's first backward), and one pixel row at a time
with the taps as a tile axis (1.3-7x slower than cuDNN's backward). The ConvFFN's GELU fused in (session 26: the
weight-gradient kernel recomputing the conv for GELU's derivative) saved inductor's GELU kernels but made the step 5% slower.
Tested against torch's conv on the GPU and, through TRITON_INTERPRET=1, on the CPU.
"""
import torch
import triton
import triton.language as tl

BLOCK_P = 32  # the forward's (and the input gradient's) pixels and channels a program: the fastest of 14
BLOCK_C = 128
NUM_WARPS = 4
WGRAD_BLOCK_P = 16  # the weight gradient's pixels a loop step and channels a program (ptxas: no spills)
WGRAD_BLOCK_C = 64
WGRAD_NUM_WARPS = 4
WGRAD_STAGES = 1  # loads straight to registers: through a 2-stage pipeline in shared memory the step ran 0.2-0.4% slower (session 27)
WGRAD_PROGRAMS_PER_SM = 8


@triton.jit
def _pixels(start, total, L, side, BLOCK_P: tl.constexpr):
    """Pixels start .. start + BLOCK_P - 1 (of all images' B * L): their offsets from start, whether they
    exist, and their row and column on their image's grid. int32: tensors under 2**31 pixels."""
    offsets = tl.arange(0, BLOCK_P)
    pix = start + offsets
    p = pix % L
    return offsets, pix < total, p // side, p % side


@triton.jit
def _tap(offsets, valid, row, col, side, tap: tl.constexpr):
    """Offset of each pixel's tap-th neighbour (taps row-major over the 3x3 window) from the block's
    first pixel, and whether it lies on the same image's grid."""
    dy: tl.constexpr = tap // 3 - 1
    dx: tl.constexpr = tap % 3 - 1
    inside = valid & (row + dy >= 0) & (row + dy < side) & (col + dx >= 0) & (col + dx < side)
    return offsets + (dy * side + dx), inside


@triton.jit
def _neighbours(x_ptr, offsets, valid, row, col, side, x_row_stride, c, mask_c, tap: tl.constexpr):
    """x at each pixel's tap-th neighbour, 0 off the grid: (BLOCK_P, BLOCK_C) fp32."""
    src, inside = _tap(offsets, valid, row, col, side, tap)
    xs = tl.load(x_ptr + src[:, None] * x_row_stride + c[None, :], mask=inside[:, None] & mask_c[None, :], other=0.0)
    return xs.to(tl.float32)


@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, x_row_stride, total, L, side, C,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, MIRROR: tl.constexpr):
    """out = the conv of x; with MIRROR, the input gradient of the conv for output gradient x (taps mirrored)."""
    start = tl.program_id(0) * BLOCK_P
    offsets, valid, row, col = _pixels(start, total, L, side, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    x_ptr += tl.cast(start, tl.int64) * x_row_stride  # 64-bit only here: the offsets within a block stay small
    out_ptr += tl.cast(start, tl.int64) * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if not MIRROR:
        acc += tl.load(b_ptr + c, mask=mask_c, other=0.0)[None, :]
    for tap in tl.static_range(9):
        w = tl.load(w_ptr + c * 9 + (8 - tap if MIRROR else tap), mask=mask_c, other=0.0)
        acc += _neighbours(x_ptr, offsets, valid, row, col, side, x_row_stride, c, mask_c, tap) * w[None, :]
    tl.store(out_ptr + offsets[:, None] * C + c[None, :], acc, mask=valid[:, None] & mask_c[None, :])


@triton.jit
def _dwconv_wgrad_kernel(x_ptr, g_ptr, partial_ptr, x_row_stride, total, L, side, C,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """The weight's and bias's gradients: each program loops over pixel blocks, adding each tap's products
    g * x[shifted] elementwise into its own tile (no reductions inside the loop), and sums its tiles over
    pixels once at the end. partial_ptr: (programs along axis 0, 10, C) fp32; rows 0-8 the taps', row 9 the bias's."""
    pid = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    # one accumulator a tap, written out: Triton has no arrays of tiles, and one (9, BLOCK_P, BLOCK_C) tile
    # updated a tap at a time would select over all nine rows on every update
    acc0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, acc_bias = acc0, acc0, acc0, acc0, acc0, acc0, acc0, acc0, acc0
    for start in tl.range(pid * BLOCK_P, total, tl.num_programs(0) * BLOCK_P, num_stages=STAGES):
        offsets, valid, row, col = _pixels(start, total, L, side, BLOCK_P)
        x_block = x_ptr + tl.cast(start, tl.int64) * x_row_stride
        g = tl.load(g_ptr + tl.cast(start, tl.int64) * C + offsets[:, None] * C + c[None, :],
                    mask=valid[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        acc_bias += g
        acc0 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 0)
        acc1 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 1)
        acc2 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 2)
        acc3 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 3)
        acc4 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 4)
        acc5 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 5)
        acc6 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 6)
        acc7 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 7)
        acc8 += g * _neighbours(x_block, offsets, valid, row, col, side, x_row_stride, c, mask_c, 8)
    out = partial_ptr + pid * 10 * C + c
    tl.store(out, tl.sum(acc0, axis=0), mask=mask_c)
    tl.store(out + C, tl.sum(acc1, axis=0), mask=mask_c)
    tl.store(out + 2 * C, tl.sum(acc2, axis=0), mask=mask_c)
    tl.store(out + 3 * C, tl.sum(acc3, axis=0), mask=mask_c)
    tl.store(out + 4 * C, tl.sum(acc4, axis=0), mask=mask_c)
    tl.store(out + 5 * C, tl.sum(acc5, axis=0), mask=mask_c)
    tl.store(out + 6 * C, tl.sum(acc6, axis=0), mask=mask_c)
    tl.store(out + 7 * C, tl.sum(acc7, axis=0), mask=mask_c)
    tl.store(out + 8 * C, tl.sum(acc8, axis=0), mask=mask_c)
    tl.store(out + 9 * C, tl.sum(acc_bias, axis=0), mask=mask_c)


def _rows(x):
    """x (B, L, C) with unit channel stride and evenly spaced pixels (a channel slice of a wider tensor
    qualifies: the SSM's half of in_proj), and that spacing; anything else is made contiguous first."""
    if x.stride(2) != 1 or x.stride(0) != x.shape[1] * x.stride(1):
        x = x.contiguous()
    return x, x.stride(1)


def _wgrad_programs(x, total, block_p, channel_blocks):
    """How many programs a weight-gradient kernel spreads its total pixels (tokens) over, for each block of
    channels: WGRAD_PROGRAMS_PER_SM a multiprocessor in all (4 multiprocessors off the GPU: the interpreter),
    and no more than there are blocks of block_p pixels."""
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    return max(1, min(triton.cdiv(total, block_p), WGRAD_PROGRAMS_PER_SM * sms // channel_blocks))


def _gradient_shapes(x, weight):
    """A backward op's outputs as shapes only (torch.compile's fake tensors): grad_x like x, the weight's and
    bias's gradients in fp32."""
    return (x.new_empty(x.shape), weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty(weight.shape[0], dtype=torch.float32))


def _conv(x, weight, bias, side, mirror):
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    out = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(batch * length, BLOCK_P), triton.cdiv(channels, BLOCK_C))
    weight = weight.float().contiguous()
    _dwconv_fwd_kernel[grid](x, weight, weight if bias is None else bias.float().contiguous(), out, row_stride,
                             batch * length, length, side, channels, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, MIRROR=mirror,
                             num_warps=NUM_WARPS)
    return out


# Custom operators, as for the scan kernels: torch.compile calls each as one opaque op on tensors
# laid out as in eager mode.
@torch.library.custom_op("vision_mamba::dwconv3x3", mutates_args=())
def dwconv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, side: int) -> torch.Tensor:
    """x (B, L, C) on a side x side grid; weight (C, 1, 3, 3) and bias (C,) of a depthwise Conv2d with
    padding 1, any float dtype. Returns (B, L, C) in x's dtype, contiguous."""
    return _conv(x, weight, bias, side, mirror=False)


@dwconv3x3.register_fake
def _(x, weight, bias, side):
    return x.new_empty(x.shape)


@torch.library.custom_op("vision_mamba::dwconv3x3_backward", mutates_args=())
def dwconv3x3_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for x (x's dtype, contiguous), weight and bias (fp32)."""
    grad = grad.contiguous()
    grad_x = _conv(grad, weight, None, side, mirror=True)
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    total = batch * length
    channel_blocks = triton.cdiv(channels, WGRAD_BLOCK_C)
    programs = _wgrad_programs(x, total, WGRAD_BLOCK_P, channel_blocks)
    partial = torch.empty((programs, 10, channels), dtype=torch.float32, device=x.device)
    _dwconv_wgrad_kernel[(programs, channel_blocks)](x, grad, partial, row_stride, total, length, side, channels,
                                                     BLOCK_P=WGRAD_BLOCK_P, BLOCK_C=WGRAD_BLOCK_C, STAGES=WGRAD_STAGES,
                                                     num_warps=WGRAD_NUM_WARPS)
    sums = partial.sum(0)  # (10, C)
    return grad_x, sums[:9].t().contiguous().view(weight.shape), sums[9].clone()


@dwconv3x3_backward.register_fake
def _(grad, x, weight, side):
    return _gradient_shapes(x, weight)


def _register_conv_autograd(conv_op, backward_op):
    """Autograd for a conv op called as (x, weight, bias, *shape args) through its backward op, called as
    (grad, x, weight, *shape args) and returning the gradients of x, weight (fp32) and bias (fp32)."""
    def save_inputs(ctx, inputs, output):
        x, weight, _, *ctx.shape_args = inputs
        ctx.save_for_backward(x, weight)

    def grads(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = backward_op(grad, x, weight, *ctx.shape_args)
        return grad_x, grad_w.to(weight.dtype), grad_b.to(weight.dtype), *[None] * len(ctx.shape_args)

    conv_op.register_autograd(grads, setup_context=save_inputs)


_register_conv_autograd(dwconv3x3, dwconv3x3_backward)


# ------------------------------------------------------------------------------------------
# The SSM's causal conv1d (K taps along the tokens, one filter a channel) on (B, L, C) tokens:
#     forward      out[t, c] = bias[c] + sum over k < K of w[c, k] * x[t - (K-1) + k, c]
#     input grad   grad_x[s, c] = sum over k of w[c, k] * g[s + (K-1) - k, c]   (the taps read forward)
#     weight grad  grad_w[c, k] = sum over t of g[t, c] * x[t - (K-1) + k, c]; grad_b[c] = sum of g
# A tap that falls before its sequence's first token (or after its last) reads 0. The forward and input
# gradient add one load a tap in registers; in the weight gradient the K taps are a tile axis (padded to a
# power of two, KP), one (BLOCK_P, KP, BLOCK_C) accumulator summed over tokens once at the end. torch runs
# this conv in its native depthwise kernels, 2.3 ms of the fashion_mnist preset's 24.4 ms step on an H200
# (docs/BENCHMARKS.md, session 30); with these kernels, the default since session 31 (vision_mamba.causal_conv),
# that step is 15% faster.
CAUSAL_BLOCK_P = 32
CAUSAL_BLOCK_C = 64
CAUSAL_WGRAD_BLOCK_P = 16


@triton.jit
def _causal_window(x_ptr, start, total, L, x_row_stride, c, mask_c, K: tl.constexpr, KP: tl.constexpr, BLOCK_P: tl.constexpr):
    """x at tokens start .. start + BLOCK_P - 1's K window positions, (BLOCK_P, KP, BLOCK_C) fp32, with x_ptr at
    token start: tap k at t - (K-1) + k, 0 before the token's own sequence and for the padding taps k >= K.
    Also the token offsets and which tokens exist."""
    offsets = tl.arange(0, BLOCK_P)
    valid = start + offsets < total
    k = tl.arange(0, KP)
    shift = k - (K - 1)
    position = (start + offsets) % L
    source = position[:, None] + shift[None, :]  # (BLOCK_P, KP): the tap's token within the sequence
    inside = valid[:, None] & (k < K)[None, :] & (source >= 0) & (source < L)
    pointers = x_ptr + (offsets[:, None] + shift[None, :])[:, :, None] * x_row_stride + c[None, None, :]
    window = tl.load(pointers, mask=inside[:, :, None] & mask_c[None, None, :], other=0.0)
    return window.to(tl.float32), offsets, valid


@triton.jit
def _causal_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, x_row_stride, total, L, C, K: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, FORWARD_TAPS: tl.constexpr):
    """out = the causal conv of x; with FORWARD_TAPS (and no bias), the input gradient for output gradient x.
    One (BLOCK_P, BLOCK_C) load a tap, added up in registers: no reduction across threads."""
    start = tl.program_id(0) * BLOCK_P
    offsets = tl.arange(0, BLOCK_P)
    valid = start + offsets < total
    position = (start + offsets) % L
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    x_ptr += tl.cast(start, tl.int64) * x_row_stride
    out_ptr += tl.cast(start, tl.int64) * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if not FORWARD_TAPS:
        acc += tl.load(b_ptr + c, mask=mask_c, other=0.0)[None, :]
    for k in tl.static_range(K):
        shift = (K - 1) - k if FORWARD_TAPS else k - (K - 1)
        inside = valid & (position + shift >= 0) & (position + shift < L)
        xs = tl.load(x_ptr + (offsets + shift)[:, None] * x_row_stride + c[None, :],
                     mask=inside[:, None] & mask_c[None, :], other=0.0)
        w = tl.load(w_ptr + c * K + k, mask=mask_c, other=0.0)
        acc += xs.to(tl.float32) * w[None, :]
    tl.store(out_ptr + offsets[:, None] * C + c[None, :], acc, mask=valid[:, None] & mask_c[None, :])


@triton.jit
def _causal_wgrad_kernel(x_ptr, g_ptr, partial_ptr, x_row_stride, total, L, C, K: tl.constexpr, KP: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each program loops over token blocks, adding g * x[tap] into one (BLOCK_P, KP, BLOCK_C) tile and g into a
    (BLOCK_P, BLOCK_C) one, and sums them over tokens at the end. partial_ptr: (programs, K + 1, C) fp32;
    rows 0 .. K-1 the taps', row K the bias's."""
    pid = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    acc = tl.zeros((BLOCK_P, KP, BLOCK_C), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in tl.range(pid * BLOCK_P, total, tl.num_programs(0) * BLOCK_P):
        x_block = x_ptr + tl.cast(start, tl.int64) * x_row_stride
        window, offsets, valid = _causal_window(x_block, start, total, L, x_row_stride, c, mask_c, K, KP, BLOCK_P)
        g = tl.load(g_ptr + tl.cast(start, tl.int64) * C + offsets[:, None] * C + c[None, :],
                    mask=valid[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        acc += g[:, None, :] * window
        acc_bias += g
    k = tl.arange(0, KP)
    out = partial_ptr + pid * (K + 1) * C
    tl.store(out + k[:, None] * C + c[None, :], tl.sum(acc, axis=0), mask=(k < K)[:, None] & mask_c[None, :])
    tl.store(out + K * C + c, tl.sum(acc_bias, axis=0), mask=mask_c)


def _causal(x, weight, bias, forward_taps):
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    taps = weight.shape[-1]
    out = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(batch * length, CAUSAL_BLOCK_P), triton.cdiv(channels, CAUSAL_BLOCK_C))
    weight = weight.float().contiguous()
    _causal_fwd_kernel[grid](x, weight, weight if bias is None else bias.float().contiguous(), out, row_stride,
                             batch * length, length, channels, K=taps, BLOCK_P=CAUSAL_BLOCK_P, BLOCK_C=CAUSAL_BLOCK_C,
                             FORWARD_TAPS=forward_taps, num_warps=NUM_WARPS)
    return out


@torch.library.custom_op("vision_mamba::causal_conv1d", mutates_args=())
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (B, L, C); weight (C, 1, K) and bias (C,) of a depthwise Conv1d, applied causally along L (output t sees
    inputs t-K+1 .. t), any float dtype. Returns (B, L, C) in x's dtype, contiguous."""
    return _causal(x, weight, bias, forward_taps=False)


@causal_conv1d.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("vision_mamba::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward(grad: torch.Tensor, x: torch.Tensor,
                           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for x (x's dtype, contiguous), weight and bias (fp32)."""
    grad = grad.contiguous()
    grad_x = _causal(grad, weight, None, forward_taps=True)
    x, row_stride = _rows(x)
    batch, length, channels = x.shape
    taps = weight.shape[-1]
    total = batch * length
    channel_blocks = triton.cdiv(channels, CAUSAL_BLOCK_C)
    programs = _wgrad_programs(x, total, CAUSAL_WGRAD_BLOCK_P, channel_blocks)
    partial = torch.empty((programs, taps + 1, channels), dtype=torch.float32, device=x.device)
    _causal_wgrad_kernel[(programs, channel_blocks)](x, grad, partial, row_stride, total, length, channels, K=taps,
                                                     KP=triton.next_power_of_2(taps), BLOCK_P=CAUSAL_WGRAD_BLOCK_P,
                                                     BLOCK_C=CAUSAL_BLOCK_C, num_warps=NUM_WARPS)
    sums = partial.sum(0)  # (K + 1, C)
    return grad_x, sums[:taps].t().contiguous().view(weight.shape), sums[taps].clone()


@causal_conv1d_backward.register_fake
def _(grad, x, weight):
    return _gradient_shapes(x, weight)


_register_conv_autograd(causal_conv1d, causal_conv1d_backward)
