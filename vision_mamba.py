"""Vision Mamba: a pure-PyTorch hybrid of bidirectional selective state-space (Mamba) layers
and multi-head attention for image classification.

Reads top-down: PatchEmbed -> blocks -> norm -> mean pool -> head.

Glossary of symbols used in shape comments
    B      batch size                       L      tokens per image (H/p * W/p)
    D      embedding width (embed_dim)      E      SSM inner width (expand * D)
    G      scan directions (2: forward over the token order, and backward)
    N      SSM state size per channel (d_state)
    R      rank of the delta projection (ceil(D / 16) rounded up to a multiple of 8)
    delta  per-token, per-channel step size, softplus(...) > 0
    A      per-channel, per-state decay rate, A = -exp(A_log) < 0
    Bm, Cm input-dependent input and output maps of the SSM (B and C in the Mamba paper)

The selective scan has two implementations side by side: `selective_scan_ref`, a plain loop
over tokens that is obviously correct, and `selective_scan`, the fast path used by the model:
a radix-8 tree scan with a hand-written backward and no Python loop over L, which on CUDA
hands over to the fused Triton kernels of selective_scan_triton.py. Tests hold every path to
the reference in value and gradient.
"""
import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch.compile's on-disk caches (inductor's FX graphs, AOT autograd's) key a compiled graph by the traced
# model, not by the code of the custom ops inside it (attention's core below, the scan kernels of
# selective_scan_triton.py). After an update, a graph compiled against an older op's fake, which says how the
# op's outputs are laid out, would be reused and fail its stride checks at run time. So these files' hash is
# part of every key.
OP_FILES = ("vision_mamba.py", "selective_scan_triton.py", "depthwise_conv_triton.py")


def ops_cache_tag(folder):
    digest = hashlib.sha256()
    for name in OP_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f.read())
    return "vision_mamba-" + digest.hexdigest()[:16]


torch.compiler.config.cache_key_tag = (os.environ.get("TORCH_COMPILE_CACHE_KEY_TAG", "")
                                       + ops_cache_tag(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------------------------------
# Size table: the one place where the model sizes are defined. Parameter counts are at
# 32x32, 3 channels, 10 classes, block_type="hybrid" (tests check these figures).


@dataclass(frozen=True)
class ModelSize:
    embed_dim: int
    depth: int
    num_heads: int
    d_state: int
    d_conv: int
    expand: int
    mlp_ratio: float
    approx_params_m: float


MODEL_SIZES = {
    "tiny": ModelSize(embed_dim=192, depth=10, num_heads=3, d_state=16, d_conv=4, expand=1, mlp_ratio=4.0, approx_params_m=6.21),
    "small": ModelSize(embed_dim=384, depth=10, num_heads=6, d_state=16, d_conv=4, expand=1, mlp_ratio=4.0, approx_params_m=24.19),
    "base": ModelSize(embed_dim=768, depth=10, num_heads=12, d_state=16, d_conv=4, expand=1, mlp_ratio=4.0, approx_params_m=95.71),
    "large": ModelSize(embed_dim=1024, depth=18, num_heads=16, d_state=16, d_conv=4, expand=1, mlp_ratio=4.0, approx_params_m=298.66),
}
BLOCK_TYPES = ("hybrid", "ssm", "attention")
# The stems that halve the image with convs before patchifying, each with its count of residual conv pairs
# at full size and at half size (the name counts the convs)
HALVING_STEMS = {"conv3": (0, 0), "conv5": (0, 1), "conv7": (1, 1), "conv9": (1, 2), "conv11": (2, 2), "conv15": (3, 3)}
STEMS = ("conv", *HALVING_STEMS, "patch")
SSM_CONVS = ("1d", "2d")  # the SSM layer's conv: causal over the token order (Mamba, Vim) or 3x3 over the grid (VMamba)

# ------------------------------------------------------------------------------------------
# Selective scan.
#   h[t] = exp(delta[t] * A) * h[t-1] + delta[t] * Bm[t] * u[t]
#   y[t] = sum_n Cm[t, n] * h[t, n] + D * u[t]
# Shapes: u, delta (B, L, G, E); A (G, E, N); Bm, Cm (B, L, G, N); D (G, E). All math in fp32.

# The fast path is a radix-SCAN_CHUNK tree scan: a constant number of elementwise steps inside
# chunks of SCAN_CHUNK tokens, then the same recurrence one level up over the chunk ends. It
# multiplies decay factors in [0, 1] directly, never exp(-cumsum): nothing can overflow, tiny
# decays underflow harmlessly to 0, and no clamp changes the result.
SCAN_CHUNK = 8


def selective_scan_ref(u, delta, A, Bm, Cm, D):
    """Sequential reference: one token at a time, exactly the recurrence above."""
    u, delta, Bm, Cm = u.float(), delta.float(), Bm.float(), Cm.float()
    batch, length, groups, inner = u.shape
    h = u.new_zeros(batch, groups, inner, A.shape[-1])  # (B, G, E, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, :, None] * A)  # (B, G, E, N)
        h = decay * h + (delta[:, t] * u[:, t])[..., None] * Bm[:, t, :, None, :]
        ys.append((h * Cm[:, t, :, None, :]).sum(-1))  # (B, G, E)
    return torch.stack(ys, dim=1) + u * D


def linear_scan_(a, x, reverse=False):
    """In place: x becomes h, with h[t] = a[t] * h[t-1] + x[t] along dim 1 and h[-1] = 0
    (reverse: h[t] = a[t] * h[t+1] + x[t], h[L] = 0), for decays a in [0, 1]; a is overwritten.

    Radix tree scan, no loop over L: SCAN_CHUNK elementwise steps run the recurrence inside
    every chunk at once, turning a into each position's decay from the chunk's edge; the states
    at the chunk edges obey the same recurrence over L / SCAN_CHUNK chunks (recursion, depth
    log8(L)); then every position adds the carried-in state times its decay from the edge.
    Returns h (x itself, or a new tensor when L had to be padded to a multiple of the chunk).
    """
    length = x.shape[1]
    if length == 1:
        return x
    chunk = min(SCAN_CHUNK, length)
    pad = (-length) % chunk
    if pad:  # decay 1 and input 0 leave the padded tail harmless in both directions
        pad_shape = (x.shape[0], pad) + x.shape[2:]
        a = torch.cat([a, a.new_ones(pad_shape)], dim=1)
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=1)
    chunked = (x.shape[0], x.shape[1] // chunk, chunk) + x.shape[2:]
    h, decay_from_edge = x.view(chunked), a.view(chunked)  # (B, L/c, c, ...)
    order = list(range(chunk - 1, -1, -1) if reverse else range(chunk))
    for previous, j in zip(order, order[1:]):  # fixed count, independent of L
        h[:, :, j].addcmul_(decay_from_edge[:, :, j], h[:, :, previous])
        decay_from_edge[:, :, j].mul_(decay_from_edge[:, :, previous])
    # true state at each chunk's far edge, then carried into the next chunk: (B, L/c, ...)
    edge = linear_scan_(decay_from_edge[:, :, order[-1]].clone(), h[:, :, order[-1]].clone(), reverse)
    h.addcmul_(decay_from_edge, _shift(edge, reverse)[:, :, None])
    return x[:, :length]


def _shift(x, reverse=False):
    """x[t-1] along dim 1, zero at t = 0 (reverse: x[t+1], zero at the end)."""
    zero = torch.zeros_like(x[:, :1])
    return torch.cat([x[:, 1:], zero], dim=1) if reverse else torch.cat([zero, x[:, :-1]], dim=1)


# On CUDA the scan runs as two fused Triton kernels (selective_scan_triton.py), the same
# computation without the (B, L, G, N, E) round trips through memory. VISION_MAMBA_SCAN=torch
# forces the pure-PyTorch path everywhere. The environment settings that pick a backend (this one, and
# VISION_MAMBA_CONV below), each with its allowed values, the default first.
BACKEND_CHOICES = {"VISION_MAMBA_SCAN": ("auto", "torch"), "VISION_MAMBA_CONV": ("triton", "aten", "shifts")}
SCAN_BACKEND = os.environ.get("VISION_MAMBA_SCAN", BACKEND_CHOICES["VISION_MAMBA_SCAN"][0])


def backend_env_problem():
    """A line naming an environment setting this module does not know (a typo, such as
    VISION_MAMBA_CONV=cudnn for aten), which it would otherwise ignore without a word; None if all are known."""
    for name, choices in BACKEND_CHOICES.items():
        value = os.environ.get(name)
        if value is not None and value not in choices:
            return f"{name}={value!r} is not one of {', '.join(choices)}; unset it or pick one of those"
    return None


try:
    import depthwise_conv_triton as _triton_conv
    import selective_scan_triton as _triton_scan
except ImportError:  # CPU-only installs may lack Triton
    _triton_conv = _triton_scan = None


def _use_fused_kernels(u, d_state):
    return (u.is_cuda and SCAN_BACKEND != "torch" and _triton_scan is not None
            and _triton_scan.supports(d_state))


def _autocast_off(device):
    """The scan's exp, products and sums run in fp32 whatever autocast says (meta: shapes only)."""
    return contextlib.nullcontext() if device.type == "meta" else torch.autocast(device_type=device.type, enabled=False)


class _SelectiveScanFn(torch.autograd.Function):
    """Saves only the inputs and recomputes the (B, L, G, N, E) states in backward, as the CUDA
    kernel of the official Mamba does; works in place on a few such buffers. The internal layout
    puts E innermost, so every broadcast runs over contiguous memory. (The fused Triton path also
    saves the forward's checkpoints, the state before every 2 tokens, and recomputes only the rest.)
    The backward is the adjoint recurrence run in reverse:
        g_h[t] = exp(delta[t+1] A) g_h[t+1] + Cm[t] g_y[t]
    """

    @staticmethod
    def _decay_and_states(u, delta, A_ne, Bm):
        decay = torch.exp_(delta[:, :, :, None, :] * A_ne)  # (B, L, G, N, E), in [0, 1]
        x = (delta * u)[:, :, :, None, :] * Bm[..., None]  # (B, L, G, N, E)
        return decay, linear_scan_(decay.clone(), x)

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, backward_follows):
        ctx.fused = _use_fused_kernels(u, A.shape[-1])
        if ctx.fused:  # Triton on CUDA: reads any float dtype, computes in fp32; (B, L, G*.) tensors
            inputs = _triton_scan.to_operator_layout(u, delta, A, Bm, Cm, D)  # (B, L, G*E), (B, L, G*N)
            y, checkpoints = _triton_scan.scan_forward(*inputs, backward_follows)
            ctx.save_for_backward(*inputs, checkpoints)
            return y.unflatten(2, A.shape[:2])  # (B, L, G, E)
        with _autocast_off(u.device):
            u, delta, A, Bm, Cm, D = (t.float() for t in (u, delta, A, Bm, Cm, D))
            _, h = _SelectiveScanFn._decay_and_states(u, delta, A.transpose(-1, -2), Bm)
            y = (h * Cm[..., None]).sum(3) + u * D
        ctx.save_for_backward(u, delta, A, Bm, Cm, D)
        return y

    @staticmethod
    def backward(ctx, g_y):
        if ctx.fused:
            g_u, g_delta, g_A, g_Bm, g_Cm, g_D = _triton_scan.scan_backward(*ctx.saved_tensors, g_y.flatten(2))
            g_u, g_delta, g_Bm, g_Cm = (g.unflatten(2, (g_A.shape[0], -1)) for g in (g_u, g_delta, g_Bm, g_Cm))
            return g_u, g_delta, g_A, g_Bm, g_Cm, g_D, None
        u, delta, A, Bm, Cm, D = ctx.saved_tensors
        with _autocast_off(u.device):
            g_y = g_y.float()
            A_ne = A.transpose(-1, -2)  # (G, N, E)
            decay, h = _SelectiveScanFn._decay_and_states(u, delta, A_ne, Bm)
            g_h = linear_scan_(_shift(decay, reverse=True), Cm[..., None] * g_y[:, :, :, None, :], reverse=True)
            g_Cm = (h * g_y[:, :, :, None, :]).sum(-1)
            g_x_dot_B = (g_h * Bm[..., None]).sum(3)  # dL/d(delta * u): (B, L, G, E)
            g_Bm = (g_h * (delta * u)[:, :, :, None, :]).sum(-1)
            # d/d(log decay) at t = g_h[t] * decay[t] * h[t-1]; zero at t = 0, where h[-1] = 0
            g_log_decay = g_h
            g_log_decay[:, 1:].mul_(decay[:, 1:]).mul_(h[:, :-1])
            g_log_decay[:, 0] = 0.0
            g_delta = (g_log_decay * A_ne).sum(3) + g_x_dot_B * u
            g_A = g_log_decay.mul_(delta[:, :, :, None, :]).sum((0, 1)).transpose(-1, -2)
            g_u = g_x_dot_B * delta + g_y * D
            g_D = (g_y * u).sum((0, 1))
        return g_u, g_delta, g_A, g_Bm, g_Cm, g_D, None


# On a CPU the scan runs over blocks of the batch whose (B, L, G, N, E) buffers stay around 4 MB:
# they stay in cache, and glibc serves them from its heap instead of fresh page-faulted mmaps.
CPU_SCAN_BLOCK_ELEMENTS = 2 ** 20


def selective_scan(u, delta, A, Bm, Cm, D):
    """Fast path: same contract as selective_scan_ref, parallel over L, fp32 even under autocast."""
    batch, length, groups, inner = u.shape
    block = batch
    if u.device.type == "cpu":
        block = max(1, CPU_SCAN_BLOCK_ELEMENTS // (length * groups * inner * A.shape[-1]))
    # the fused forward writes the backward's checkpoints only when a backward can follow
    backward_follows = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, Bm, Cm, D))
    if block >= batch:
        return _SelectiveScanFn.apply(u, delta, A, Bm, Cm, D, backward_follows)
    return torch.cat([_SelectiveScanFn.apply(u_, delta_, A, Bm_, Cm_, D, backward_follows) for u_, delta_, Bm_, Cm_ in
                      zip(u.split(block), delta.split(block), Bm.split(block), Cm.split(block))])


# ------------------------------------------------------------------------------------------
# Layers


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> tokens (B, L, D), L = (H/p) * (W/p).

    Stems, cheapest first:
      'patch'  a p x p patchifying conv alone (ViT);
      'conv'   a 3x3 conv (D/2 channels, BN, GELU) before the patchifying conv, which gives the
               tokens local edges to work with on small images;
      'conv3'  two 3x3 convs (D/4 channels at full size, then D/2 at stride 2) before a p/2 x p/2
               patchifying conv: the 'early convolutions' of hybrid ViTs (CCT, Xiao et al. 2021),
               same token count, fewer multiply-adds than 'conv' (needs an even patch size);
      'conv5'  'conv3' plus a residual pair of 3x3 convs at H/2 (D/2 channels): more local
               mixing where it is cheap, at 4x the token count the blocks see (8% more
               multiply-adds than 'conv3' in tiny hybrid, by torch's FLOP counter);
      'conv7'  'conv5' plus a residual pair at full size (D/4 channels), before the halving conv:
               the CNN-like local bias at every pixel that WRN-type models win small grey images with;
      'conv9'  'conv7' with a second residual pair at H/2;
      'conv11', 'conv15'  two and three pairs at each size.
    The halving stems' names count their convs: the first, the halving one, two per pair, and the
    patchifying conv.
    stem_width multiplies the conv stems' channels (D/2, or D/4 and D/2, at 1): at 2 the stem is
    the bulk of the multiply-adds, a small CNN feeding the blocks (the fashion_mnist preset).
    """

    def __init__(self, img_size, patch_size, in_chans, embed_dim, stem, stem_width=1.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        widened = int(embed_dim * stem_width)  # the conv stems' channels: D/2 and D/4 at stem_width 1
        if widened < 4 or (stem == "patch" and stem_width != 1):
            raise ValueError(f"stem_width {stem_width} must leave the stem's narrowest conv D/4 * stem_width >= 1 "
                             f"channel, and be 1 for stem 'patch', which has no convs to widen")
        self.num_patches = (img_size // patch_size) ** 2
        if stem == "patch":
            self.stem, patch_in = nn.Identity(), in_chans
        elif stem == "conv":
            self.stem, patch_in = conv_bn_gelu(in_chans, widened // 2), widened // 2
        elif stem in HALVING_STEMS:
            if patch_size % 2:
                raise ValueError(f"stem {stem!r} halves the image before patchifying: patch_size must be even, got {patch_size}")
            pairs_full, pairs_half = HALVING_STEMS[stem]
            quarter, half = widened // 4, widened // 2
            self.stem = nn.Sequential(conv_bn_gelu(in_chans, quarter),  # (B, D/4, H, W)
                                      *(ResidualConvPair(quarter) for _ in range(pairs_full)),
                                      conv_bn_gelu(quarter, half, stride=2),  # (B, D/2, H/2, W/2)
                                      *(ResidualConvPair(half) for _ in range(pairs_half)))
            patch_in, patch_size = half, patch_size // 2
        else:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.proj = nn.Conv2d(patch_in, embed_dim, patch_size, stride=patch_size)
        # channels-last (NHWC), the layout cuDNN's fast convs work in: in NCHW each stem conv paid layout
        # conversions both ways, forward and backward (session 26: gated hybrid-tiny's step 5.8% faster)
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.proj(self.stem(x.contiguous(memory_format=torch.channels_last)))  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, L, D)


def conv_bn_gelu(in_channels, out_channels, stride=1):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.GELU())


class ResidualConvPair(nn.Module):
    """x + (conv 3x3 -> BN -> GELU) twice, channels and size kept (the 'conv5' stem's extra layers)."""

    def __init__(self, channels):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_gelu(channels, channels), conv_bn_gelu(channels, channels))

    def forward(self, x):
        return x + self.convs(x)


# Depthwise convs (the SSM's causal conv1d, the 3x3 grid convs) run as conv kernels: on CUDA as
# depthwise_conv_triton's (VISION_MAMBA_CONV=triton, the default; the grid convs 2.4-3.1% off gated hybrid-tiny's
# training step on the H200, session 25; the causal conv below), elsewhere as torch's (all of them with
# VISION_MAMBA_CONV=aten). With VISION_MAMBA_CONV=shifts, compiled graphs compute them instead as sums
# of shifted copies, which inductor can fuse with the element-wise ops around them (the official Mamba
# hand-writes a CUDA kernel, causal_conv1d, for the same reason). Eager runs keep the conv kernels: the
# shifted copies cost more there (CPU: 33-39 ms against 22-26 ms, forward and backward of one SSM conv).
# Not the default: on the H200 it made no difference through the noise in session 10, and with CUDA
# graphs the training step ran 11-24% slower with it in session 24 (docs/BENCHMARKS.md).
CONV_BACKEND = os.environ.get("VISION_MAMBA_CONV", BACKEND_CHOICES["VISION_MAMBA_CONV"][0])


def _convs_as_shifts():
    return CONV_BACKEND == "shifts" and torch.compiler.is_compiling()


def _use_triton_conv(tokens, conv):
    return CONV_BACKEND == "triton" and tokens.is_cuda and _triton_conv is not None and conv.bias is not None


# The causal conv1d through depthwise_conv_triton's kernels on CUDA (with VISION_MAMBA_CONV=triton), held to
# torch's conv by the tests (Triton's interpreter on the CPU; test_gpu.py on CUDA). torch's native depthwise
# kernels took 2.3 ms of the fashion_mnist preset's 24.2 ms GPU step; with these (which also read the strided
# channel slice in place) the step is 20.4 ms and training 15% faster on the H200 (session 31). False: torch's conv.
TRITON_CAUSAL_CONV = True


def causal_conv(conv, u):
    """conv, a depthwise Conv1d over G*E channels with padding K-1, applied causally along L:
    u (B, L, G, E) -> (B, L, G, E), output t seeing inputs t-K+1 .. t."""
    batch, length, groups, inner = u.shape
    if TRITON_CAUSAL_CONV and _use_triton_conv(u, conv):
        return _triton_conv.causal_conv1d(u.flatten(2), conv.weight, conv.bias).unflatten(2, (groups, inner))
    if _convs_as_shifts():
        taps = conv.kernel_size[0]
        weight = conv.weight.view(groups, inner, taps).to(u.dtype)
        padded = F.pad(u, (0, 0, 0, 0, taps - 1, 0))  # (B, K-1+L, G, E): zeros before the first token
        out = conv.bias.view(groups, inner).to(u.dtype)
        for k in range(taps):
            out = out + padded[:, k:k + length] * weight[..., k]
        return out
    x = conv(u.flatten(2).transpose(1, 2))[..., :length]  # (B, G*E, L): zero-padded both ends, the tail cut off
    return x.transpose(1, 2).unflatten(2, (groups, inner))


def grid_conv(conv, tokens, side):
    """conv, a depthwise 3x3 Conv2d with padding 1, over tokens laid out row-major on a side x side
    grid: (B, L, C) -> (B, L, C)."""
    if _convs_as_shifts():
        padded = F.pad(tokens.unflatten(1, (side, side)), (0, 0, 1, 1, 1, 1))  # (B, H/p+2, W/p+2, C), zero border
        weight = conv.weight[:, 0].to(tokens.dtype)  # (C, 3, 3)
        out = conv.bias.to(tokens.dtype)
        for row in range(3):
            for col in range(3):
                out = out + padded[:, row:row + side, col:col + side] * weight[:, row, col]
        return out.flatten(1, 2)
    if _use_triton_conv(tokens, conv):
        return _triton_conv.dwconv3x3(tokens, conv.weight, conv.bias, side)
    grid = tokens.unflatten(1, (side, side)).permute(0, 3, 1, 2)  # (B, C, H/p, W/p), channels-last in memory: no copy
    return conv(grid).permute(0, 2, 3, 1).flatten(1, 2)  # (B, L, C)


# The per-direction projections' weight gradients sum over all B * L tokens into a (G, I, O) result as small
# as 2 x 192 x 48. Taken as one product, that leaves cuBLAS too few output tiles to fill the GPU (two kernels
# of 93 and 116 us a layer for hybrid-tiny at batch 1024, session 26). So the tokens are split into this many
# parts, the parts' products run as one batched product, and they are added up (session 26: the step 1.8% faster).
PROJECTION_WGRAD_SPLITS = 16


class _DirectionalProjection(torch.autograd.Function):
    """x (B, L, G, I) times w (G, I, O), one matrix per direction: (B, L, G, O)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.einsum("blgi,gio->blgo", x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        splits = math.gcd(x.shape[0], PROJECTION_WGRAD_SPLITS)
        parts_x = x.reshape(splits, -1, *x.shape[2:])  # (S, B/S * L, G, I)
        parts_grad = grad.reshape(splits, -1, *grad.shape[2:])  # (S, B/S * L, G, O)
        parts_grad_w = torch.einsum("sngi,sngo->sgio", parts_x, parts_grad)  # (S, G, I, O)
        grad_w = parts_grad_w.sum(0, dtype=torch.promote_types(w.dtype, torch.float32))  # bf16 parts added in fp32
        return torch.einsum("blgo,gio->blgi", grad, w), grad_w.to(w.dtype)


class BidirectionalSSM(nn.Module):
    """Mamba selective SSM layer scanning the tokens in both directions (as Vim does).

    Both directions share in_proj and out_proj; each has its own conv, x/dt projections, A, D
    and dt bias, stored stacked along G so the two scans run as one. The directions are
    averaged, not summed: summing is what made Vim's published training go NaN.

    With grid_size set, one depthwise 3x3 conv over the token grid, shared by both directions,
    replaces the per-direction causal conv1d of width d_conv (VMamba's SS2D does the same): the
    scan's input then mixes each token with its neighbours above and below, not only with the
    tokens just before it in the row-major order.
    """

    def __init__(self, dim, d_state, d_conv, expand, grid_size=None):
        super().__init__()
        self.inner = expand * dim
        self.d_state = d_state
        # Mamba's ceil(D/16), rounded up to a multiple of 8: at D=192 its 12 made the x/dt projections
        # 44 and 12 wide, which cuBLAS could only run on a slow unaligned kernel (bf16 tensor cores
        # want multiples of 8); rank 16 costs 31k parameters in tiny and nothing elsewhere.
        self.dt_rank = 8 * math.ceil(math.ceil(dim / 16) / 8)
        directions, inner = 2, self.inner
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.grid_size = grid_size
        if grid_size:
            self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        else:
            self.conv = nn.Conv1d(directions * inner, directions * inner, d_conv, groups=directions * inner, padding=d_conv - 1)
        self.x_proj = nn.Parameter(torch.empty(directions, inner, self.dt_rank + 2 * d_state))
        self.dt_proj = nn.Parameter(torch.empty(directions, self.dt_rank, inner))
        self.dt_bias = nn.Parameter(torch.empty(directions, inner))
        self.A_log = nn.Parameter(torch.empty(directions, inner, d_state))
        self.D = nn.Parameter(torch.empty(directions, inner))
        self.out_proj = nn.Linear(inner, dim)
        self.scan = selective_scan
        init_weights(self)  # usable on its own, not only inside VisionMamba

    def forward(self, x):
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        if self.grid_size:
            u = F.silu(grid_conv(self.conv, u, self.grid_size))
            u = torch.stack([u, u.flip(1)], dim=2)  # (B, L, G=2, E): direction 1 reads the tokens backwards
        else:
            u = torch.stack([u, u.flip(1)], dim=2)  # (B, L, G=2, E): direction 1 reads the tokens backwards
            u = F.silu(causal_conv(self.conv, u))  # each direction's conv sees only its own earlier tokens
        proj = _DirectionalProjection.apply(u, self.x_proj.to(u.dtype))  # (B, L, G, R + 2N)
        dt_low, Bm, Cm = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(_DirectionalProjection.apply(dt_low, self.dt_proj.to(dt_low.dtype)).float() + self.dt_bias)
        A = -torch.exp(self.A_log.float()).clamp(min=1e-4)  # bounded away from 0: no unbounded accumulator
        y = self.scan(u, delta, A, Bm, Cm, self.D.float())  # (B, L, G, E), fp32
        y = 0.5 * (y[:, :, 0] + y[:, :, 1].flip(1))  # (B, L, E): back to token order, averaged
        return self.out_proj(y.to(z.dtype) * F.silu(z))


# ------------------------------------------------------------------------------------------
# Attention's core, softmax(q k^T * scale) v, as one op that torch.compile cannot see into. With
# the plain SDPA call in the graph, whole-model compiled bf16 training went wrong in 7 of 12 runs
# (5 NaN, 2 collapses without one); behind this op it was stable in 5 of 5 (docs/RESULTS.md,
# session 18), and the rest of the model still compiles as one graph, with no break at attention.
# Forward and, where it applies, backward are SDPA's fused kernels, as in eager mode; beside them a
# written-out reference backward serves the CPU, masks and fp32, and tests hold the fused one to it.


@torch.library.custom_op("vision_mamba::attention", mutates_args=())
def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: Optional[torch.Tensor],
                   scale: float) -> torch.Tensor:
    """q, k, v: (B, heads, L, head_dim); allowed: (L, L) bool, where a token may attend, or None."""
    # SDPA's fused kernel; contiguous, as the fake below promises: compiled graphs lay out what follows
    # from the fake's strides, and SDPA may return a transposed view
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale).contiguous()


@attention_core.register_fake
def _(q, k, v, allowed, scale):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


# The backward's (B, heads, rows, L) fp32 blocks are formed for as many query rows at a time as fit
# in this many bytes: all rows at once for the presets (50 MiB at B=1024, L=64), while 224x224
# images at patch 4 (L=3136) would otherwise need ~15 GiB per block where SDPA's kernels need none.
ATTENTION_BACKWARD_BLOCK_BYTES = 256 * 2**20


def attention_probabilities(q, k, allowed, scale):
    """softmax(q k^T * scale) over the allowed keys, in q's dtype: (B, heads, rows of q, L)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1)


def attention_backward_ref(q, k, v, allowed, scale, grad):
    """The reference backward, in fp32 (fp64 if q is), from the recomputed probabilities P: dV = P^T g,
    dP = g V^T, and through the softmax dS = P * (dP - rowsum(dP * P)) * scale, then dQ = dS K, dK = dS^T Q.
    A block of query rows at a time: each row's softmax needs only its own scores; dK and dV sum over the blocks."""
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    batch, heads, length, _ = q.shape
    rows = max(1, ATTENTION_BACKWARD_BLOCK_BYTES // (batch * heads * k.shape[-2] * compute_dtype.itemsize))
    with _autocast_off(q.device):
        qx, kx, vx, gx = (t.to(compute_dtype) for t in (q, k, v, grad))
        grad_q, grad_k, grad_v = torch.empty_like(qx), torch.zeros_like(kx), torch.zeros_like(vx)
        for start in range(0, length, rows):
            block = slice(start, start + rows)
            p = attention_probabilities(qx[:, :, block], kx, None if allowed is None else allowed[block], scale)
            g = gx[:, :, block]
            grad_v += p.transpose(-2, -1) @ g
            grad_p = g @ vx.transpose(-2, -1)
            grad_s = p * (grad_p - (grad_p * p).sum(-1, keepdim=True)) * scale
            grad_q[:, :, block] = grad_s @ kx
            grad_k += grad_s.transpose(-2, -1) @ qx[:, :, block]
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


def fused_backward_applies(q, allowed):
    """SDPA's memory-efficient kernel takes the presets' attention under autocast: CUDA, fp16/bf16 heads of up
    to 256 channels in multiples of 8, no mask (compute capability 8.0 and up, for bf16). A run that asks for
    deterministic algorithms (training.deterministic) keeps the reference, whose sums have a fixed order."""
    head_dim = q.shape[-1]
    return (q.is_cuda and allowed is None and q.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0
            and head_dim <= 256 and torch.version.hip is None and not torch.are_deterministic_algorithms_enabled()
            and torch.cuda.get_device_capability(q.device) >= (8, 0))


def fused_attention_backward(q, k, v, scale, grad):
    """SDPA's memory-efficient backward, the one eager SDPA runs when forced to that kernel: the forward is run
    again for the softmax statistics (logsumexp) its backward reads. At the presets' short sequences it beats
    FlashAttention-2's (on the H200 at B=1024, L=64, 3 heads of 64, SDPA forward + backward took 0.18 ms
    through it, 0.46 ms through FlashAttention; docs/BENCHMARKS.md, sessions 21 and 22)."""
    out, logsumexp, philox_seed, philox_offset = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, False, scale=scale)
    # attn_bias is typed Tensor, not Tensor?, in this op's schema; None reaches it as an undefined tensor, no bias
    grad_q, grad_k, grad_v, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad.contiguous(), q, k, v, None, out, logsumexp, philox_seed, philox_offset, 0.0, [True, True, True, False],
        False, scale=scale)
    return grad_q, grad_k, grad_v


def in_token_layout(grad):
    """grad (B, heads, L, head_dim) laid out in memory as (B, L, heads, head_dim), the layout the memory-efficient
    kernel writes (no copy then) and the one the qkv projection's gradient is gathered into. Every path returns
    it, because compiled graphs lay out what follows from the fake's strides."""
    return grad.transpose(1, 2).contiguous().transpose(1, 2)


@torch.library.custom_op("vision_mamba::attention_backward", mutates_args=())
def attention_core_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: Optional[torch.Tensor],
                            scale: float, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for q, k, v: SDPA's fused kernel where it applies, else the reference (CPU, masks, fp32)."""
    if fused_backward_applies(q, allowed):
        grads = fused_attention_backward(q, k, v, scale, grad)
    else:
        grads = attention_backward_ref(q, k, v, allowed, scale, grad)
    return tuple(in_token_layout(g) for g in grads)


@attention_core_backward.register_fake
def _(q, k, v, allowed, scale, grad):
    return tuple(in_token_layout(t.new_empty(t.shape)) for t in (q, k, v))


def _save_attention_inputs(ctx, inputs, output):
    q, k, v, allowed, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, allowed)


def _attention_core_grads(ctx, grad):
    q, k, v, allowed = ctx.saved_tensors
    return *attention_core_backward(q, k, v, allowed, ctx.scale, grad), None, None


attention_core.register_autograd(_attention_core_grads, setup_context=_save_attention_inputs)


class Attention(nn.Module):
    """Multi-head self-attention. With lsa_tokens=L (the sequence length) it is Locality
    Self-Attention (Lee et al. 2021, ViTs on small datasets): no token attends to itself, whose own
    similarity otherwise dominates and flattens its attention to the others, and the softmax
    temperature is learned (from sqrt(head_dim), the usual scale)."""

    def __init__(self, dim, num_heads, lsa_tokens=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.log_temperature = nn.Parameter(torch.zeros(())) if lsa_tokens else None  # set by init_weights
        if lsa_tokens:  # built once, not per step (non-persistent: not in checkpoints)
            not_self = ~torch.eye(lsa_tokens, dtype=torch.bool)  # (L, L): True where attending is allowed
            self.register_buffer("not_self", not_self, persistent=False)

    def forward(self, x):
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        # one copy into (3, B, heads, L, head_dim): the op saves q, k, v for its backward, whose matmuls then
        # read plain rows (the layout measured on the H200, docs/RESULTS.md session 18)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # (B, heads, L, head_dim) each
        if self.log_temperature is None:
            x = attention_core(q, k, v, None, q.shape[-1] ** -0.5)
        else:
            q = q * torch.exp(-self.log_temperature).to(q.dtype)
            x = attention_core(q, k, v, self.not_self, 1.0)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. With grid_size set, a depthwise 3x3 conv over the token grid sits
    between fc1 and GELU (PVTv2's ConvFFN): each token's MLP also sees its 8 neighbours, the
    locality that ViT-type models lack on small images, at 9 multiply-adds per hidden channel."""

    def __init__(self, dim, hidden, dropout, grid_size=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.grid_size = grid_size
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if grid_size else None
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = self.fc1(x)  # (B, L, hidden)
        if self.dwconv is not None:
            x = grid_conv(self.dwconv, x, self.grid_size)
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, prob):
        super().__init__()
        self.prob = prob
        # a tensor, not a float: torch.compile would specialise each block's graph on its own
        # probability and recompile once per block (non-persistent: not in checkpoints)
        self.register_buffer("keep_prob", torch.tensor(1.0 - prob), persistent=False)

    def forward(self, x):
        if self.prob == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) < self.keep_prob  # (B, 1, 1)
        return x * (keep / self.keep_prob).to(x.dtype)


class Block(nn.Module):
    """Pre-norm block: token mixer (SSM, attention, or both through a learnable gate), then MLP.

    Hybrid gate: mix = g * ssm + (1 - g) * attn with g = sigmoid(gate) per channel; gate starts
    at 0, so both branches contribute half at init.
    """

    def __init__(self, dim, block_type, num_heads, d_state, d_conv, expand, mlp_ratio, drop_path, dropout,
                 mlp_grid=None, ssm_grid=None, lsa_tokens=None):
        super().__init__()
        self.block_type = block_type
        self.norm1 = nn.LayerNorm(dim)
        self.ssm = BidirectionalSSM(dim, d_state, d_conv, expand, ssm_grid) if block_type in ("hybrid", "ssm") else None
        self.attn = Attention(dim, num_heads, lsa_tokens) if block_type in ("hybrid", "attention") else None
        self.gate = nn.Parameter(torch.zeros(dim)) if block_type == "hybrid" else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout, grid_size=mlp_grid)
        self.drop_path = DropPath(drop_path)

    def mix(self, x):
        if self.block_type == "ssm":
            return self.ssm(x)
        if self.block_type == "attention":
            return self.attn(x)
        g = torch.sigmoid(self.gate).to(x.dtype)
        return g * self.ssm(x) + (1 - g) * self.attn(x)

    def forward(self, x):
        x = x + self.drop_path(self.mix(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def parse_block_pattern(block_type, depth):
    """'hybrid' -> every layer hybrid; 'ssm,attention' -> that pattern repeated to `depth` layers."""
    pattern = [name.strip() for name in str(block_type).split(",")]
    unknown = [name for name in pattern if name not in BLOCK_TYPES]
    if unknown:  # split always gives at least one entry ('' included, which is unknown)
        raise ValueError(f"block_type {block_type!r}: {', '.join(map(repr, unknown))} is not one of "
                         f"{', '.join(BLOCK_TYPES)} (or a comma-separated pattern of them)")
    if depth % len(pattern):
        raise ValueError(f"block_type pattern {block_type!r} has {len(pattern)} entries, which does not divide depth {depth}: "
                         f"use a depth that is a multiple of {len(pattern)}, or another pattern")
    return pattern * (depth // len(pattern))


class VisionMamba(nn.Module):
    def __init__(self, num_classes=10, img_size=32, in_chans=3, patch_size=4, embed_dim=192, depth=12,
                 num_heads=3, d_state=16, d_conv=4, expand=1, mlp_ratio=4.0, block_type="hybrid",
                 stem="conv", stem_width=1.0, drop_path=0.1, dropout=0.0, mlp_conv=False, ssm_conv="1d", attn_lsa=False):
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, stem, stem_width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        drop_rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # deeper layers dropped more often
        if ssm_conv not in SSM_CONVS:
            raise ValueError(f"ssm_conv must be one of {SSM_CONVS}, got {ssm_conv!r}")
        grid = img_size // patch_size
        self.blocks = nn.ModuleList(
            Block(embed_dim, kind, num_heads, d_state, d_conv, expand, mlp_ratio, rate, dropout,
                  mlp_grid=grid if mlp_conv else None, ssm_grid=grid if ssm_conv == "2d" else None,
                  lsa_tokens=grid * grid if attn_lsa else None)
            for kind, rate in zip(parse_block_pattern(block_type, depth), drop_rates)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward_features(self, x):
        x = self.patch_embed(x) + self.pos_embed  # (B, L, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)  # mean pooling over tokens: (B, D)

    def forward(self, x):
        return self.head(self.forward_features(x))

    def no_weight_decay(self):
        """Names of parameters that get no weight decay: norms, biases, SSM dynamics, position embedding, gates."""
        ssm_dynamics = ("A_log", "D", "dt_bias")
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or name.endswith(("pos_embed",) + tuple("." + s for s in ssm_dynamics))}

    def hidden_matrices(self):
        """Names of the blocks' nn.Linear weights (projections, attention, MLP): what Muon orthogonalises.
        The stem, position embedding, head and the SSM's per-direction tensors are not hidden matrices (Muon's authors
        leave embeddings and the classifier to AdamW)."""
        return {f"blocks.{name}.weight" for name, module in self.blocks.named_modules() if isinstance(module, nn.Linear)}

    def param_groups(self, weight_decay, exclude=frozenset()):
        """AdamW's two groups, with and without weight decay, of the parameters not named in exclude."""
        skip = self.no_weight_decay()
        params = {n: p for n, p in self.named_parameters() if n not in exclude}
        groups = [
            {"params": [p for n, p in params.items() if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in params.items() if n in skip], "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]


@torch.no_grad()
def init_weights(model):
    """Every initialisation in the model (or in any of its layers), in one place."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)  # ViT/DeiT practice
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BidirectionalSSM):
            _, inner, d_state = module.A_log.shape
            # S4D-real init: A = -(1..N) per channel, kept as log so A stays negative
            module.A_log.copy_(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand_as(module.A_log))
            module.D.fill_(1.0)  # skip connection starts as identity
            bound = inner ** -0.5  # x_proj as nn.Linear's default (Mamba keeps it): B, C and dt start O(1)
            nn.init.uniform_(module.x_proj, -bound, bound)
            # Mamba's dt init: dt_proj ~ U(+-R^-0.5); dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1]
            bound = module.dt_rank ** -0.5
            nn.init.uniform_(module.dt_proj, -bound, bound)
            dt = torch.exp(torch.empty_like(module.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
            module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        elif isinstance(module, Attention) and module.log_temperature is not None:
            head_dim = module.qkv.in_features // module.num_heads
            module.log_temperature.fill_(0.5 * math.log(head_dim))  # temperature sqrt(head_dim): the usual scale at init
    if isinstance(model, VisionMamba):
        nn.init.trunc_normal_(model.pos_embed, std=0.02)


def model_kwargs(model_size, **overrides):
    """The size table's entry for model_size with any field overridden (None means: keep)."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size {model_size!r} is not one of {tuple(MODEL_SIZES)}")
    size = MODEL_SIZES[model_size]
    kwargs = {k: getattr(size, k) for k in ("embed_dim", "depth", "num_heads", "d_state", "d_conv", "expand", "mlp_ratio")}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def create_model(model_size="tiny", num_classes=10, img_size=32, in_chans=3, **overrides):
    """Build a VisionMamba of a named size; overrides change any constructor argument."""
    return VisionMamba(num_classes=num_classes, img_size=img_size, in_chans=in_chans, **model_kwargs(model_size, **overrides))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
