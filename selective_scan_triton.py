"""The selective scan as two Triton kernels, for CUDA: the fused path of `vision_mamba.selective_scan`.

Triton ships with PyTorch's CUDA builds and compiles these kernels just in time: no custom
CUDA build. Like Mamba's own kernel, each program keeps the (BLOCK_E, N) state of one sequence
in registers and walks the tokens in order, so the (B, L, G, E, N) states never travel through
GPU memory in full. When a backward pass will follow, the forward pass also writes the state
before every CHUNK tokens as a checkpoint; the backward then runs the adjoint recurrence in
reverse a chunk at a time, each chunk's states recomputed from its checkpoint into registers:
    g_h[t] = exp(delta[t+1] A) g_h[t+1] + Cm[t] g_y[t]
Sums that span programs (g_Bm, g_Cm over channel blocks; g_A, g_D over the batch) are written
as per-program partial sums that torch adds up afterwards: no atomics, deterministic gradients.
Semantics are those of `vision_mamba.selective_scan_ref`, all arithmetic in fp32, but the
(B, L, G, .) tensors cross into and out of the operators flattened to 3-d: u, delta (B, L, G*E);
Bm, Cm (B, L, G*N); A (G, E, N) and D (G, E) give G, E and N. In a compiled graph with convolutions,
torch.compile lays 4-d activations out channels-last (inductor's layout optimisation), and each
such tensor then cost a copy on its way into the kernels; 3-d tensors keep the row-major layout
the kernels index by hand.
Tested against the reference on the GPU and, through TRITON_INTERPRET=1, on the CPU.
"""
import os

import torch
import triton
import triton.language as tl

# Launch shape: channels per program, warps per program, and software-pipelining depth of the
# token loops (loads of later tokens issued while the recurrence works on the current one).
BLOCK_E = 64  # measured on an H200 (docs/BENCHMARKS.md): one warp per program and a
NUM_WARPS = 1  # 3-deep pipeline beat 4 warps by 1.3-1.6x; more programs hide the loop's latency
STAGES = 3
BWD_BLOCK_E = 32  # the backward's own launch shape, one warp a program. It holds more (BLOCK_E, N) tiles at once
BWD_NUM_WARPS = 1  # than the forward. Uncapped, ptxas gives it all 255 registers a thread may have, room for only
BWD_STAGES = 1  # 8 warps an SM; capped at 128, 16 warps fit. At that cap 16 channels a program spill almost nothing
BWD_MAXNREG = 128  # (session 21: 1.38 against 1.78 ms a layer) and 32 spill 264 bytes a thread (ptxas of Triton 3.8),
# yet 32 won in the training step (session 27: gated hybrid-tiny 1.4% faster than with 16, and faster than 32
# under caps 144 and 184, which spill less or nothing): each token's loads, address arithmetic and reductions
# serve twice the channels, and the per-channel-block partial sums of g_Bm and g_Cm halve.
# The backward used to write every recomputed state out and read it back: (B, L, G, E, N) fp32,
# 1.6 GB a layer for hybrid-tiny at batch 1024. Now only the state before each chunk of CHUNK tokens
# goes through memory: with chunks of 4 the training step's peak memory fell by 1.1 GiB, at the same
# speed (session 16). Chunks of 2 keep twice as many checkpoints, but fewer named states (Triton has no
# register arrays) are live at once, which the register cap above needs. Until session 24 the backward
# recomputed the checkpoints itself in a forward sweep of its own; the forward pass, which computes
# every state anyway, now writes them, and they are kept until the backward (0.8 GB a layer for
# hybrid-tiny at batch 1024).
CHUNK = 2
# tl.exp is ex2.approx of x * log2(e), and without flush-to-zero ptxas wraps each one in a test for a
# denormal result and two conditional scalings: five instructions around the one that counts, once per
# channel, state and token in both kernels. A decay under 2**-126 is as good as 0, so the kernels take exp2
# of delta * (A * log2(e)) with ex2.approx.ftz in inline PTX. Triton's interpreter (the CPU tests) has no
# PTX: there tl.exp2 stands in, the same function up to the flush.
LOG2E, LN2 = tl.constexpr(1.4426950408889634), tl.constexpr(0.6931471805599453)
FAST_EXP2 = os.environ.get("TRITON_INTERPRET", "0") != "1"


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, ckpt_ptr, L, G, E, N: tl.constexpr,
                     BLOCK_E: tl.constexpr, STAGES: tl.constexpr, CHUNK: tl.constexpr, SAVE_CHECKPOINTS: tl.constexpr,
                     FAST_EXP2: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)  # one sequence (b, g) per row of the grid
    b, g = pid_bg // G, pid_bg % G
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, N)
    mask_e = e < E
    A2 = tl.load(A_ptr + (g * E + e)[:, None] * N + n[None, :], mask=mask_e[:, None], other=0.0) * LOG2E
    D = tl.load(D_ptr + g * E + e, mask=mask_e, other=0.0)
    chunks = tl.cdiv(L, CHUNK)
    ckpt_rows = pid_bg * chunks  # this sequence's (chunks, E, N) checkpoints
    h = tl.zeros((BLOCK_E, N), dtype=tl.float32)
    for c in tl.range(0, chunks, num_stages=STAGES):
        if SAVE_CHECKPOINTS:  # the state before chunk c, for the backward
            tl.store(ckpt_ptr + ((ckpt_rows + c) * E + e)[:, None] * N + n[None, :], h, mask=mask_e[:, None])
        for k in tl.static_range(CHUNK):
            t = c * CHUNK + k
            row = (b * L + t) * G + g  # (b, t, g) in the (B, L, G, .) layouts
            u, dt, Bt = _token_inputs(u_ptr, delta_ptr, B_ptr, row, t < L, E, e, n, mask_e, N)
            Ct = tl.load(C_ptr + row * N + n, mask=(n >= 0) & (t < L), other=0.0).to(tl.float32)
            h = _step(h, _decay(dt, A2, FAST_EXP2), u, dt, Bt)
            y = tl.sum(h * Ct[None, :], axis=1) + D * u
            tl.store(y_ptr + row * E + e, y, mask=mask_e & (t < L))


@triton.jit
def _token_inputs(u_ptr, delta_ptr, B_ptr, row, valid, E, e, n, mask_e, N: tl.constexpr):
    """Token row's u, delta (BLOCK_E,) and Bm (N,) in fp32; zeros for a token past the end."""
    u = tl.load(u_ptr + row * E + e, mask=mask_e & valid, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + row * E + e, mask=mask_e & valid, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + row * N + n, mask=(n >= 0) & valid, other=0.0).to(tl.float32)
    return u, dt, Bt


@triton.jit
def _decay(dt, A2, FAST_EXP2: tl.constexpr):
    """exp(delta A) (BLOCK_E, N), the state's decay over a token, from A2 = A log2(e); 1 for a token past
    the end (delta 0), so the state carries through it unchanged."""
    if FAST_EXP2:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [dt[:, None] * A2],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return tl.exp2(dt[:, None] * A2)


@triton.jit
def _step(h, decay, u, dt, Bt):
    """The state after a token from the state before it and the token's decay (a token past the end keeps it)."""
    return decay * h + (dt * u)[:, None] * Bt[None, :]


@triton.jit
def _adjoint_step(h_before, h_t, decay, u, dt, Bt, g_h, g_A, g_D, A2, D, C_ptr, gy_ptr, gu_ptr, gdelta_ptr,
                  gB_ptr, gC_ptr, partial_rows, b, g, t, L, G, E, e, n, mask_e, N: tl.constexpr):
    """Token t of the reverse pass, given the states before and after it, its decay and inputs u, dt, Bt:
    writes the token's gradients, adds to the g_A and g_D sums, and carries g_h back to token t - 1."""
    row = (b * L + t) * G + g
    valid = t < L
    mask_n = (n >= 0) & valid
    Ct = tl.load(C_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + row * E + e, mask=mask_e & valid, other=0.0).to(tl.float32)
    g_h += Ct[None, :] * gy[:, None]
    tl.store(gC_ptr + (partial_rows + row) * N + n, tl.sum(h_t * gy[:, None], axis=0), mask=mask_n)
    g_x_dot_B = tl.sum(g_h * Bt[None, :], axis=1)  # dL/d(delta * u)
    tl.store(gB_ptr + (partial_rows + row) * N + n, tl.sum(g_h * (dt * u)[:, None], axis=0), mask=mask_n)
    g_h_before = g_h * decay  # what h[t] passes back to h[t-1]
    g_log_decay = g_h_before * h_before  # d/d(delta[t] A) = g_h[t] * decay[t] * h[t-1]
    # sum over the states of g_log_decay * A, taken as ln(2) times that of A2 = A log2(e)
    tl.store(gdelta_ptr + row * E + e, tl.sum(g_log_decay * A2, axis=1) * LN2 + g_x_dot_B * u, mask=mask_e & valid)
    tl.store(gu_ptr + row * E + e, g_x_dot_B * dt + D * gy, mask=mask_e & valid)
    g_A += g_log_decay * dt[:, None]
    g_D += gy * u
    return g_h_before, g_A, g_D


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, gy_ptr, ckpt_ptr,
                     gu_ptr, gdelta_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, L, G, E,
                     N: tl.constexpr, BLOCK_E: tl.constexpr, STAGES: tl.constexpr, CHUNK: tl.constexpr,
                     FAST_EXP2: tl.constexpr):
    """ckpt_ptr: the forward pass's checkpoints, (B * G, cdiv(L, CHUNK), E * N)."""
    tl.static_assert(CHUNK == 2, "the reverse pass below is written out for chunks of 2 tokens")
    pid_bg = tl.program_id(0).to(tl.int64)
    b, g = pid_bg // G, pid_bg % G
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, N)
    mask_e = e < E
    mask_en = mask_e[:, None]
    A2 = tl.load(A_ptr + (g * E + e)[:, None] * N + n[None, :], mask=mask_en, other=0.0) * LOG2E
    D = tl.load(D_ptr + g * E + e, mask=mask_e, other=0.0)
    chunks = tl.cdiv(L, CHUNK)
    ckpt_rows = pid_bg * chunks  # this sequence's (chunks, E, N) checkpoints

    g_h = tl.zeros((BLOCK_E, N), dtype=tl.float32)  # dL/dh[t], carried backwards
    g_A = tl.zeros((BLOCK_E, N), dtype=tl.float32)
    g_D = tl.zeros((BLOCK_E,), dtype=tl.float32)
    partial_rows = tl.program_id(1).to(tl.int64) * tl.num_programs(0) * L  # this channel block's (B, L, G, N) slice
    for i in tl.range(0, chunks, num_stages=STAGES):  # reverse, a chunk at a time
        c = chunks - 1 - i
        t0 = c * CHUNK
        h0 = tl.load(ckpt_ptr + ((ckpt_rows + c) * E + e)[:, None] * N + n[None, :], mask=mask_en, other=0.0)
        # each token's inputs loaded once, for its state's recomputation and for its adjoint step
        u0, dt0, B0 = _token_inputs(u_ptr, delta_ptr, B_ptr, (b * L + t0) * G + g, t0 < L, E, e, n, mask_e, N)
        u1, dt1, B1 = _token_inputs(u_ptr, delta_ptr, B_ptr, (b * L + t0 + 1) * G + g, t0 + 1 < L, E, e, n, mask_e, N)
        decay0, decay1 = _decay(dt0, A2, FAST_EXP2), _decay(dt1, A2, FAST_EXP2)
        h1 = _step(h0, decay0, u0, dt0, B0)
        h2 = _step(h1, decay1, u1, dt1, B1)
        g_h, g_A, g_D = _adjoint_step(h1, h2, decay1, u1, dt1, B1, g_h, g_A, g_D, A2, D, C_ptr, gy_ptr, gu_ptr,
                                      gdelta_ptr, gB_ptr, gC_ptr, partial_rows, b, g, t0 + 1, L, G, E, e, n, mask_e, N)
        g_h, g_A, g_D = _adjoint_step(h0, h1, decay0, u0, dt0, B0, g_h, g_A, g_D, A2, D, C_ptr, gy_ptr, gu_ptr,
                                      gdelta_ptr, gB_ptr, gC_ptr, partial_rows, b, g, t0, L, G, E, e, n, mask_e, N)
    tl.store(gA_ptr + (pid_bg * E + e)[:, None] * N + n[None, :], g_A, mask=mask_en)  # (b, g, e, n)
    tl.store(gD_ptr + pid_bg * E + e, g_D, mask=mask_e)


def supports(d_state):
    """The kernels need a power-of-two state size (tl.arange) of at most 64."""
    return d_state & (d_state - 1) == 0 and 1 <= d_state <= 64


def to_operator_layout(u, delta, A, Bm, Cm, D):
    """The scan's inputs as the operators below take them: the (B, L, G, .) tensors flattened to (B, L, G*.)."""
    return u.flatten(2), delta.flatten(2), A, Bm.flatten(2), Cm.flatten(2), D


def _grid(u, A, block_e):
    groups, inner, _ = A.shape
    return (u.shape[0] * groups, triton.cdiv(inner, block_e))


# Registered as custom operators, so torch.compile treats each kernel as one opaque call on
# tensors laid out exactly as in eager mode, instead of tracing the launch and choosing its own
# strides for the buffers the kernels index by hand.
@torch.library.custom_op("vision_mamba::scan_forward", mutates_args=())
def scan_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                 D: torch.Tensor, save_checkpoints: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, L, G*E) fp32, and the checkpoints scan_backward needs (an empty tensor unless
    save_checkpoints); inputs may be bf16/fp16/fp32."""
    u, delta, Bm, Cm = (t.contiguous() for t in (u, delta, Bm, Cm))
    A, D = A.float().contiguous(), D.float().contiguous()
    length = u.shape[1]
    groups, inner, _ = A.shape
    y = torch.empty(u.shape, dtype=torch.float32, device=u.device)
    checkpoints = _checkpoint_buffer(u, A, save_checkpoints)
    _scan_fwd_kernel[_grid(u, A, BLOCK_E)](u, delta, A, Bm, Cm, D, y, checkpoints, length, groups, inner, N=A.shape[-1],
                                        BLOCK_E=BLOCK_E, STAGES=STAGES, CHUNK=CHUNK if save_checkpoints else 1,
                                        SAVE_CHECKPOINTS=save_checkpoints, FAST_EXP2=FAST_EXP2, num_warps=NUM_WARPS)
    return y, checkpoints


def _checkpoint_buffer(u, A, save_checkpoints, empty=torch.empty):
    groups, inner, d_state = A.shape
    shape = (u.shape[0] * groups, triton.cdiv(u.shape[1], CHUNK), inner * d_state) if save_checkpoints else (0,)
    return empty(shape, dtype=torch.float32, device=u.device)


@scan_forward.register_fake
def _(u, delta, A, Bm, Cm, D, save_checkpoints):
    return u.new_empty(u.shape, dtype=torch.float32), _checkpoint_buffer(u, A, save_checkpoints, u.new_empty)


@torch.library.custom_op("vision_mamba::scan_backward", mutates_args=())
def scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                  D: torch.Tensor, checkpoints: torch.Tensor, g_y: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (fp32) for u, delta, A, Bm, Cm, D, shaped as they are; checkpoints from
    scan_forward(..., save_checkpoints=True)."""
    u, delta, Bm, Cm, checkpoints, g_y = (t.contiguous() for t in (u, delta, Bm, Cm, checkpoints, g_y))
    A, D = A.float().contiguous(), D.float().contiguous()
    batch, length, _ = u.shape
    groups, inner, _ = A.shape
    f32 = dict(dtype=torch.float32, device=u.device)
    grid = _grid(u, A, BWD_BLOCK_E)
    g_u, g_delta = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
    channel_blocks = grid[1]  # partial sums, added up below: per channel block for Bm, Cm, per sample for A, D
    g_B, g_C = torch.empty(channel_blocks, *Bm.shape, **f32), torch.empty(channel_blocks, *Cm.shape, **f32)
    g_A, g_D = torch.empty(batch, *A.shape, **f32), torch.empty(batch, *D.shape, **f32)
    _scan_bwd_kernel[grid](u, delta, A, Bm, Cm, D, g_y, checkpoints, g_u, g_delta, g_A, g_B, g_C, g_D,
                           length, groups, inner, N=A.shape[-1], BLOCK_E=BWD_BLOCK_E, STAGES=BWD_STAGES, CHUNK=CHUNK,
                           FAST_EXP2=FAST_EXP2, num_warps=BWD_NUM_WARPS, maxnreg=BWD_MAXNREG)
    return g_u, g_delta, g_A.sum(0), g_B.sum(0), g_C.sum(0), g_D.sum(0)


@scan_backward.register_fake
def _(u, delta, A, Bm, Cm, D, checkpoints, g_y):
    return tuple(t.new_empty(t.shape, dtype=torch.float32) for t in (u, delta, A, Bm, Cm, D))
