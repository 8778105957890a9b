"""The selective scan as two Triton kernels, for CUDA: the fused path of `vision_mamba.selective_scan`.

Triton ships with PyTorch's CUDA builds and compiles these kernels just in time: no custom
CUDA build. Like Mamba's own kernel, each program keeps the (BLOCK_E, N) state of one sequence
in registers and walks the tokens in order, so the (B, L, G, E, N) states never travel through
GPU memory in the forward pass. The backward pass recomputes the states once into a scratch
buffer, then runs the adjoint recurrence in reverse:
    g_h[t] = exp(delta[t+1] A) g_h[t+1] + Cm[t] g_y[t]
Sums that span programs (g_Bm, g_Cm over channel blocks; g_A, g_D over the batch) are written
as per-program partial sums that torch adds up afterwards: no atomics, deterministic gradients.
Shapes and semantics are those of `vision_mamba.selective_scan_ref`: u, delta (B, L, G, E);
A (G, E, N); Bm, Cm (B, L, G, N); D (G, E); all arithmetic in fp32.
Tested against the reference on the GPU and, through TRITON_INTERPRET=1, on the CPU.
"""
import torch
import triton
import triton.language as tl

# Launch shape: channels per program, warps per program, and software-pipelining depth of the
# token loops (loads of later tokens issued while the recurrence works on the current one).
BLOCK_E = 64  # measured on an H200 (docs/BENCHMARKS.md): one warp per program and a
NUM_WARPS = 1  # 3-deep pipeline beat 4 warps by 1.3-1.6x; more programs hide the loop's latency
STAGES = 3


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, L, G, E,
                     N: tl.constexpr, BLOCK_E: tl.constexpr, STAGES: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)  # one sequence (b, g) per row of the grid
    b, g = pid_bg // G, pid_bg % G
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, N)
    mask_e = e < E
    A = tl.load(A_ptr + (g * E + e)[:, None] * N + n[None, :], mask=mask_e[:, None], other=0.0)
    D = tl.load(D_ptr + g * E + e, mask=mask_e, other=0.0)
    h = tl.zeros((BLOCK_E, N), dtype=tl.float32)
    for t in tl.range(0, L, num_stages=STAGES):
        row = (b * L + t) * G + g  # (b, t, g) in the (B, L, G, .) layouts
        u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + row * N + n).to(tl.float32)
        Ct = tl.load(C_ptr + row * N + n).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1) + D * u
        tl.store(y_ptr + row * E + e, y, mask=mask_e)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, gy_ptr, h_ptr,
                     gu_ptr, gdelta_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, L, G, E,
                     N: tl.constexpr, BLOCK_E: tl.constexpr, STAGES: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    b, g = pid_bg // G, pid_bg % G
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, N)
    mask_e = e < E
    mask_en = mask_e[:, None]
    A = tl.load(A_ptr + (g * E + e)[:, None] * N + n[None, :], mask=mask_en, other=0.0)
    D = tl.load(D_ptr + g * E + e, mask=mask_e, other=0.0)

    h = tl.zeros((BLOCK_E, N), dtype=tl.float32)
    for t in tl.range(0, L, num_stages=STAGES):  # states again, kept for the reverse pass
        row = (b * L + t) * G + g
        u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + row * N + n).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        tl.store(h_ptr + (row * E + e)[:, None] * N + n[None, :], h, mask=mask_en)

    g_h = tl.zeros((BLOCK_E, N), dtype=tl.float32)  # dL/dh[t], carried backwards
    g_A = tl.zeros((BLOCK_E, N), dtype=tl.float32)
    g_D = tl.zeros((BLOCK_E,), dtype=tl.float32)
    partial_rows = tl.program_id(1).to(tl.int64) * tl.num_programs(0) * L  # this channel block's (B, L, G, N) slice
    for i in tl.range(0, L, num_stages=STAGES):
        t = L - 1 - i
        row = (b * L + t) * G + g
        u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + row * N + n).to(tl.float32)
        Ct = tl.load(C_ptr + row * N + n).to(tl.float32)
        gy = tl.load(gy_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        h_t = tl.load(h_ptr + (row * E + e)[:, None] * N + n[None, :], mask=mask_en, other=0.0)
        g_h += Ct[None, :] * gy[:, None]
        tl.store(gC_ptr + (partial_rows + row) * N + n, tl.sum(h_t * gy[:, None], axis=0))
        g_x_dot_B = tl.sum(g_h * Bt[None, :], axis=1)  # dL/d(delta * u)
        tl.store(gB_ptr + (partial_rows + row) * N + n, tl.sum(g_h * (dt * u)[:, None], axis=0))
        # d/d(log decay[t]) = g_h[t] * decay[t] * h[t-1] = g_h[t] * (h[t] - x[t]): no second state load
        g_log_decay = g_h * (h_t - (dt * u)[:, None] * Bt[None, :])
        tl.store(gdelta_ptr + row * E + e, tl.sum(g_log_decay * A, axis=1) + g_x_dot_B * u, mask=mask_e)
        tl.store(gu_ptr + row * E + e, g_x_dot_B * dt + D * gy, mask=mask_e)
        g_A += g_log_decay * dt[:, None]
        g_D += gy * u
        g_h = g_h * tl.exp(dt[:, None] * A)
    tl.store(gA_ptr + (pid_bg * E + e)[:, None] * N + n[None, :], g_A, mask=mask_en)  # (b, g, e, n)
    tl.store(gD_ptr + pid_bg * E + e, g_D, mask=mask_e)


def supports(d_state):
    """The kernels need a power-of-two state size (tl.arange) of at most 64."""
    return d_state & (d_state - 1) == 0 and 1 <= d_state <= 64


def _grid(u):
    batch, _, groups, inner = u.shape
    return (batch * groups, triton.cdiv(inner, BLOCK_E))


# Registered as custom operators, so torch.compile treats each kernel as one opaque call on
# tensors laid out exactly as in eager mode, instead of tracing the launch and choosing its own
# strides for the buffers the kernels index by hand.
@torch.library.custom_op("vision_mamba::scan_forward", mutates_args=())
def scan_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                 D: torch.Tensor) -> torch.Tensor:
    """y (B, L, G, E) fp32; inputs may be bf16/fp16/fp32."""
    u, delta, Bm, Cm = (t.contiguous() for t in (u, delta, Bm, Cm))
    A, D = A.float().contiguous(), D.float().contiguous()
    _, length, groups, inner = u.shape
    y = torch.empty(u.shape, dtype=torch.float32, device=u.device)
    _scan_fwd_kernel[_grid(u)](u, delta, A, Bm, Cm, D, y, length, groups, inner, N=A.shape[-1], BLOCK_E=BLOCK_E,
                                      STAGES=STAGES, num_warps=NUM_WARPS)
    return y


@scan_forward.register_fake
def _(u, delta, A, Bm, Cm, D):
    return u.new_empty(u.shape, dtype=torch.float32)


@torch.library.custom_op("vision_mamba::scan_backward", mutates_args=())
def scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                  D: torch.Tensor, g_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (fp32) for u, delta, A, Bm, Cm, D."""
    u, delta, Bm, Cm, g_y = (t.contiguous() for t in (u, delta, Bm, Cm, g_y))
    A, D = A.float().contiguous(), D.float().contiguous()
    batch, length, groups, inner = u.shape
    d_state = A.shape[-1]
    f32 = dict(dtype=torch.float32, device=u.device)
    states = torch.empty(batch, length, groups, inner, d_state, **f32)
    g_u, g_delta = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
    channel_blocks = _grid(u)[1]  # partial sums, added up below: per channel block for Bm, Cm, per sample for A, D
    g_B, g_C = torch.empty(channel_blocks, *Bm.shape, **f32), torch.empty(channel_blocks, *Cm.shape, **f32)
    g_A, g_D = torch.empty(batch, *A.shape, **f32), torch.empty(batch, *D.shape, **f32)
    _scan_bwd_kernel[_grid(u)](u, delta, A, Bm, Cm, D, g_y, states, g_u, g_delta, g_A, g_B, g_C, g_D,
                               length, groups, inner, N=d_state, BLOCK_E=BLOCK_E, STAGES=STAGES,
                               num_warps=NUM_WARPS)
    return g_u, g_delta, g_A.sum(0), g_B.sum(0), g_C.sum(0), g_D.sum(0)


@scan_backward.register_fake
def _(u, delta, A, Bm, Cm, D, g_y):
    return tuple(t.new_empty(t.shape, dtype=torch.float32) for t in (u, delta, A, Bm, Cm, D))
