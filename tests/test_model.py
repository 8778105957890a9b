import itertools
import os

import pytest
import torch

import vision_mamba as vm
from vision_mamba import (BLOCK_TYPES, MODEL_SIZES, BidirectionalSSM, Block, count_parameters, create_model, linear_scan_,
                          selective_scan, selective_scan_ref)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("size,block_type,in_chans,img_size",
                         list(itertools.product(MODEL_SIZES, BLOCK_TYPES, (1, 3), (28, 32, 64))))
def test_output_shapes_every_size_block_type_channels_and_resolution(size, block_type, in_chans, img_size):
    # full-size models on the meta device: real shapes through the real code, no memory or compute
    with torch.device("meta"):
        model = create_model(size, num_classes=7, img_size=img_size, in_chans=in_chans, block_type=block_type)
        x = torch.empty(2, in_chans, img_size, img_size)
        assert model(x).shape == (2, 7)
        assert model.forward_features(x).shape == (2, MODEL_SIZES[size].embed_dim)


@pytest.mark.parametrize("block_type,in_chans,img_size", [("hybrid", 1, 28), ("ssm", 3, 32), ("attention", 3, 64), ("hybrid", 3, 64)])
def test_real_forward_is_finite(block_type, in_chans, img_size):
    model = create_model("tiny", num_classes=5, img_size=img_size, in_chans=in_chans, block_type=block_type, depth=2)
    out = model(torch.randn(2, in_chans, img_size, img_size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_parameter_counts_match_the_size_table(size):
    with torch.device("meta"):
        params = count_parameters(create_model(size, num_classes=10, img_size=32, in_chans=3))
    assert params / 1e6 == pytest.approx(MODEL_SIZES[size].approx_params_m, rel=0.02)


def test_size_ranges_from_the_brief():
    def params(size):
        with torch.device("meta"):
            return count_parameters(create_model(size)) / 1e6
    assert 5 <= params("tiny") <= 7
    assert 20 <= params("small") <= 26
    assert 80 <= params("base") <= 100
    assert 270 <= params("large") <= 330


def test_block_type_pattern_and_bad_values():
    model = create_model("tiny", block_type="ssm,attention", depth=4)
    assert [b.block_type for b in model.blocks] == ["ssm", "attention", "ssm", "attention"]
    with pytest.raises(ValueError, match="'mamba' is not one of hybrid, ssm, attention"):
        create_model("tiny", block_type="mamba")
    with pytest.raises(ValueError, match="does not divide depth"):
        create_model("tiny", block_type="ssm,attention,hybrid", depth=4)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        create_model("tiny", img_size=30)
    with pytest.raises(ValueError, match="model_size"):
        create_model("huge")
    with pytest.raises(ValueError, match="ssm_conv must be one of"):
        create_model("tiny", ssm_conv="3d")


@pytest.mark.parametrize("stem", vm.STEMS)
def test_every_stem_gives_the_same_tokens_and_trains(stem):
    model = create_model("tiny", depth=1, img_size=28, in_chans=1, patch_size=4, stem=stem)
    tokens = model.patch_embed(torch.randn(3, 1, 28, 28))
    assert tokens.shape == (3, 49, MODEL_SIZES["tiny"].embed_dim)
    model(torch.randn(3, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.patch_embed.parameters())


@pytest.mark.parametrize("halving_stem", vm.HALVING_STEMS)
def test_halving_stems_count_their_convs_need_an_even_patch_and_conv_keeps_its_checkpoint_keys(halving_stem):
    with pytest.raises(ValueError, match="patch_size must be even"):
        create_model("tiny", img_size=33, patch_size=3, stem=halving_stem)
    embed = create_model("tiny", depth=1, img_size=28, in_chans=1, stem=halving_stem).patch_embed
    assert sum(isinstance(m, torch.nn.Conv2d) for m in embed.modules()) == int(halving_stem.removeprefix("conv"))
    keys = {k for k in create_model("tiny", depth=1, stem="conv").state_dict() if k.startswith("patch_embed.")}
    # names checkpoints written before the stems were factored out carry
    assert {"patch_embed.stem.0.weight", "patch_embed.stem.1.running_mean", "patch_embed.proj.weight"} <= keys


def test_stem_width_widens_every_stem_conv_and_keeps_the_tokens():
    narrow = create_model("tiny", depth=1, img_size=28, in_chans=1, stem="conv9").patch_embed
    wide = create_model("tiny", depth=1, img_size=28, in_chans=1, stem="conv9", stem_width=2.0).patch_embed
    dim = MODEL_SIZES["tiny"].embed_dim
    channels = lambda embed: [m.out_channels for m in embed.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert channels(narrow) == [dim // 4] * 3 + [dim // 2] * 5  # the first conv and a pair at full size, then at H/2
    assert channels(wide) == [2 * c for c in channels(narrow)]
    assert wide(torch.randn(2, 1, 28, 28)).shape == narrow(torch.randn(2, 1, 28, 28)).shape == (2, 49, dim)
    assert create_model("tiny", depth=1, stem="conv", stem_width=1.5).patch_embed.proj.in_channels == 3 * dim // 4
    with pytest.raises(ValueError, match="no convs to widen"):
        create_model("tiny", depth=1, stem="patch", stem_width=2.0)
    with pytest.raises(ValueError, match=">= 1"):
        create_model("tiny", depth=1, stem="conv3", stem_width=0.01)


def test_grid_conv_is_a_conv_over_the_row_major_token_grid():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6)
    tokens = torch.randn(2, 12, 6)[:, :9]  # 9 tokens: a 3x3 grid
    image = torch.stack([tokens[:, row * 3:(row + 1) * 3] for row in range(3)], dim=1).permute(0, 3, 1, 2)  # (B, C, 3, 3)
    expected = conv(image.contiguous())
    got = vm.grid_conv(conv, tokens, 3)  # (B, 9, C)
    for row, col in itertools.product(range(3), range(3)):
        assert torch.allclose(got[:, row * 3 + col], expected[:, :, row, col], atol=1e-6)


def test_mlp_conv_mixes_each_token_with_its_grid_neighbours_only():
    torch.manual_seed(0)
    mlp = vm.Mlp(dim=8, hidden=16, dropout=0.0, grid_size=4)  # 16 tokens on a 4x4 grid
    tokens = torch.randn(2, 16, 8)
    changed = tokens.clone()
    changed[:, 5] += 1.0  # row 1, column 1
    moved = (mlp(changed) - mlp(tokens)).abs().amax(dim=(0, 2)) > 0  # (L,)
    neighbours = {row * 4 + col for row in (0, 1, 2) for col in (0, 1, 2)}
    assert set(moved.nonzero().flatten().tolist()) == neighbours
    assert vm.Mlp(dim=8, hidden=16, dropout=0.0).dwconv is None  # off by default: a per-token MLP


@pytest.mark.parametrize("ssm_conv", vm.SSM_CONVS)
def test_model_with_the_locality_options_trains_and_compiles_without_graph_breaks(ssm_conv):
    import torch._dynamo as dynamo
    model = create_model("tiny", depth=2, img_size=28, in_chans=1, embed_dim=32, num_heads=2, block_type="ssm,attention",
                         mlp_conv=True, ssm_conv=ssm_conv, attn_lsa=True)
    assert all(block.mlp.dwconv is not None for block in model.blocks)
    assert isinstance(model.blocks[0].ssm.conv, torch.nn.Conv2d if ssm_conv == "2d" else torch.nn.Conv1d)
    x = torch.randn(2, 1, 28, 28)
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert dynamo.explain(model)(x).graph_break_count == 0


@pytest.mark.parametrize("locality", [False, True])
def test_locality_self_attention_never_attends_to_the_token_itself(locality):
    dim, length = 8, 5
    attn = vm.Attention(dim, num_heads=2, lsa_tokens=length if locality else None)
    vm.init_weights(attn)
    with torch.no_grad():  # q = k = 0: equal similarities; v = x; proj = identity
        attn.qkv.weight.zero_()
        attn.qkv.weight[2 * dim:].copy_(torch.eye(dim))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(dim))
        attn.proj.bias.zero_()
    x = torch.randn(3, length, dim)
    others = (x.sum(1, keepdim=True) - x) / (length - 1)  # each token's mean over the other tokens
    expected = others if locality else x.mean(1, keepdim=True).expand_as(x)
    assert torch.allclose(attn(x), expected, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_core_equals_sdpa_in_value_and_gradient(masked):
    # the opaque op that torch.compile calls instead of SDPA: its forward is SDPA, its backward on the CPU
    # the written-out reference (test_gpu.py holds the fused CUDA one to it), so both are held to autograd
    # through F.scaled_dot_product_attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    allowed = ~torch.eye(7, dtype=torch.bool) if masked else None
    scale = 0.3
    out = vm.attention_core(q, k, v, allowed, scale)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    assert torch.allclose(out, expected, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *qkv: vm.attention_core(*qkv, allowed, scale), (q, k, v))
    import torch._dynamo as dynamo  # compiled, the op stays one opaque call: no graph break around it
    attn = vm.Attention(8, num_heads=2, lsa_tokens=7 if masked else None)
    assert dynamo.explain(attn)(torch.randn(2, 7, 8)).graph_break_count == 0


def test_attention_core_backward_in_blocks_of_query_rows_equals_all_rows_at_once(monkeypatch):
    # large L: the backward forms its (B, heads, rows, L) blocks a few query rows at a time; the
    # gradients must be those of all rows at once (and of SDPA), mask included
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(2, 3, 10, 4, dtype=torch.float64)
    allowed = ~torch.eye(10, dtype=torch.bool)
    whole = vm.attention_core_backward(q, k, v, allowed, 0.5, grad)
    monkeypatch.setattr(vm, "ATTENTION_BACKWARD_BLOCK_BYTES", 2 * 3 * 10 * 8 * 3)  # 3 rows a block: 4 blocks
    blocks = vm.attention_core_backward(q, k, v, allowed, 0.5, grad)
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    sdpa = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=allowed, scale=0.5),
                               qkv, grad)
    for a, b, c in zip(whole, blocks, sdpa):
        assert torch.allclose(a, b, atol=1e-12) and torch.allclose(b, c, atol=1e-10)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_ops_outputs_are_laid_out_as_their_fakes_promise(masked):
    # compiled graphs lay out what follows from the fakes' strides: each real output must match its fake
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(2, 3, 7, 4) for _ in range(4))
    allowed = ~torch.eye(7, dtype=torch.bool) if masked else None
    torch.library.opcheck(vm.attention_core, (q, k, v, allowed, 0.5))
    torch.library.opcheck(vm.attention_core_backward, (q, k, v, allowed, 0.5, grad))


def test_compile_caches_are_keyed_by_the_custom_ops_source(tmp_path):
    # a compiled graph cached before an op's code changed must not be reused after: the key changes with the files
    import shutil
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in vm.OP_FILES:
        shutil.copy(os.path.join(root, name), tmp_path / name)
    before = vm.ops_cache_tag(tmp_path)
    assert before == vm.ops_cache_tag(root) and torch.compiler.config.cache_key_tag.endswith(before)
    with open(tmp_path / vm.OP_FILES[-1], "a") as f:
        f.write("\n# an edit\n")
    assert vm.ops_cache_tag(tmp_path) != before


def test_attention_core_backward_runs_in_fp32_under_autocast():
    # bf16 inputs, fp32 arithmetic: the gradients must match the fp32 computation rounded once to bf16
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    grad = torch.randn(2, 3, 16, 8)
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vm.attention_core(*low, None, 8 ** -0.5)
    out.backward(grad.bfloat16())
    exact = [t.bfloat16().float().requires_grad_() for t in (q, k, v)]
    torch.autograd.backward(vm.attention_core(*exact, None, 8 ** -0.5), grad.bfloat16().float())
    for a, b in zip(low, exact):
        assert a.grad.dtype == torch.bfloat16
        assert torch.equal(a.grad, b.grad.bfloat16())


def test_locality_self_attention_starts_at_the_usual_scale_and_learns_its_temperature():
    torch.manual_seed(0)
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2, block_type="attention", attn_lsa=True)
    attn = model.blocks[0].attn
    assert torch.exp(attn.log_temperature).item() == pytest.approx(16 ** 0.5)  # sqrt(head_dim)
    assert "blocks.0.attn.log_temperature" in model.no_weight_decay()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert attn.log_temperature.grad is not None and attn.log_temperature.grad != 0
    plain = create_model("tiny", depth=2, embed_dim=32, num_heads=2, block_type="attention")
    assert plain.blocks[0].attn.log_temperature is None and count_parameters(model) == count_parameters(plain) + 2


@pytest.mark.parametrize("ssm_conv", vm.SSM_CONVS)
def test_depthwise_convs_as_shifted_sums_equal_the_conv_kernels(ssm_conv, monkeypatch):
    # VISION_MAMBA_CONV=shifts: what compiled graphs compute instead of the depthwise conv kernels
    torch.manual_seed(0)
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2, block_type="ssm,attention", mlp_conv=True,
                         ssm_conv=ssm_conv).eval()  # eval: no random drop path
    x = torch.randn(3, 3, 32, 32)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}
    kernels, kernel_grads = run()
    monkeypatch.setattr(vm, "_convs_as_shifts", lambda: True)
    shifts, shift_grads = run()
    assert rel_err(shifts, kernels) < 1e-5
    for name in kernel_grads:
        assert rel_err(shift_grads[name], kernel_grads[name]) < 1e-4, name


def test_compiled_graphs_use_the_shifted_sums_only_when_asked(monkeypatch):
    import collections
    import torch._dynamo as dynamo
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2, block_type="ssm", mlp_conv=True)
    x = torch.randn(2, 3, 32, 32)

    def traced_convs():
        dynamo.reset()  # trace afresh: the setting is read while tracing
        explained = dynamo.explain(model)(x)
        assert explained.graph_break_count == 0
        calls = collections.Counter(getattr(node.target, "__name__", "") for graph in explained.graphs
                                    for node in graph.graph.nodes if node.op == "call_function")
        return calls["conv1d"], calls["conv2d"]
    assert traced_convs() == (2, 4)  # the two SSMs' conv1d; the stem's 3x3 conv and patchify, the two ConvFFNs
    monkeypatch.setattr(vm, "CONV_BACKEND", "shifts")
    try:
        assert traced_convs() == (0, 2)  # only the stem's convs remain
    finally:
        dynamo.reset()  # no later test may reuse a graph traced with the setting on


def random_scan_inputs(batch, length, groups, inner, d_state, delta_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, groups, inner, generator=gen)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, groups, inner, generator=gen) * delta_scale)
    A = -torch.rand(groups, inner, d_state, generator=gen) * 16 - 1e-3
    Bm = torch.randn(batch, length, groups, d_state, generator=gen)
    Cm = torch.randn(batch, length, groups, d_state, generator=gen)
    D = torch.randn(groups, inner, generator=gen)
    return [t.requires_grad_() for t in (u, delta, A, Bm, Cm, D)]


@pytest.mark.parametrize("length,delta_scale", [(1, 1.0), (7, 1.0), (64, 1.0), (100, 3.0), (1024, 1.0), (1024, 30.0), (257, 60.0)])
def test_fast_scan_matches_reference_in_value_and_gradient(length, delta_scale):
    # delta_scale 30-60 gives extreme steps (softplus up to ~200: decay exp(-3000) underflows to 0)
    inputs = random_scan_inputs(2, length, 2, 6, 4, delta_scale)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    y_ref = selective_scan_ref(*ref_inputs)
    y = selective_scan(*inputs)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert rel_err(y, y_ref) < 1e-4
    g_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, g_y)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, g_y.double())
    for name, g, g_ref in zip(("u", "delta", "A", "B", "C", "D"), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        if g_ref.norm() > 0:
            assert rel_err(g, g_ref) < 1e-4, name


def test_fast_scan_cpu_batch_blocking_gives_the_same_result(monkeypatch):
    inputs = random_scan_inputs(5, 16, 1, 8, 4)
    y_whole = selective_scan(*inputs)
    grads_whole = torch.autograd.grad(y_whole.sum(), inputs)
    monkeypatch.setattr(vm, "CPU_SCAN_BLOCK_ELEMENTS", 16 * 8 * 4 * 2)  # two samples per block
    y_blocked = selective_scan(*inputs)
    assert torch.allclose(y_blocked, y_whole, atol=1e-6)
    for g, g_blocked in zip(grads_whole, torch.autograd.grad(y_blocked.sum(), inputs)):
        assert torch.allclose(g, g_blocked, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 2, 8, 9, 64, 513])
def test_linear_scan_against_a_loop(length, reverse):
    gen = torch.Generator().manual_seed(length)
    a, x = torch.rand(3, length, 5, generator=gen), torch.randn(3, length, 5, generator=gen)
    expected, h = torch.zeros_like(x), torch.zeros(3, 5)
    for t in (reversed(range(length)) if reverse else range(length)):
        h = a[:, t] * h + x[:, t]
        expected[:, t] = h
    assert torch.allclose(linear_scan_(a.clone(), x.clone(), reverse), expected, atol=1e-5)


def test_scan_under_bf16_autocast_accumulates_in_fp32():
    inputs = random_scan_inputs(2, 64, 1, 8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(*[t.detach().bfloat16().requires_grad_() for t in inputs])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def _sensitivity(fn, x, out_token, in_token):
    """|d out[out_token] / d in[in_token]|: exactly zero when no path connects them."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn(x)[:, out_token].sum(), x)
    return grad[:, in_token].abs().sum().item()


@pytest.mark.parametrize("grid_size", [None, 4])  # the causal conv1d, or the 3x3 grid conv (16 tokens on a 4x4 grid)
def test_bidirectional_ssm_first_token_sees_the_last_token(grid_size):
    torch.manual_seed(0)
    layer = BidirectionalSSM(dim=16, d_state=4, d_conv=4, expand=2, grid_size=grid_size)
    x = torch.randn(1, 16, 16)
    assert _sensitivity(layer, x, 0, -1) > 0
    assert _sensitivity(layer, x, -1, 0) > 0
    changed = x.clone()
    changed[:, -1] += 1.0
    assert not torch.equal(layer(x)[:, 0], layer(changed)[:, 0])


@pytest.mark.parametrize("batch", [3, 32])  # 3: no split of the tokens (gcd with the split count 1); 32: 16 parts
def test_directional_projection_is_one_matrix_product_per_direction(batch):
    # the x/dt projections' product, whose weight gradient is summed over parts of the tokens, against
    # einsum's own gradients in fp64
    torch.manual_seed(0)
    x = torch.randn(batch, 5, 2, 6, dtype=torch.float64, requires_grad=True)  # (B, L, G, I)
    w = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)  # (G, I, O)
    out = vm._DirectionalProjection.apply(x, w)
    expected = torch.einsum("blgi,gio->blgo", x, w)
    assert torch.allclose(out, expected)
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(expected, (x, w), g)):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(vm._DirectionalProjection.apply, (x[:2, :3].detach().requires_grad_(), w))


def test_one_direction_alone_is_causal():
    # control for the test above: the forward-direction scan at token 0 ignores later tokens
    inputs = [t.detach() for t in random_scan_inputs(1, 12, 1, 4, 4)]
    u = inputs[0].clone().requires_grad_()
    y = selective_scan(u, *inputs[1:])
    (grad,) = torch.autograd.grad(y[:, 0].sum(), u)
    assert grad[:, 1:].abs().sum() == 0


def test_ssm_model_first_token_depends_on_last_token():
    torch.manual_seed(0)
    model = create_model("tiny", block_type="ssm", depth=2, img_size=16, in_chans=1, stem="patch").eval()
    tokens = model.patch_embed(torch.randn(1, 1, 16, 16)) + model.pos_embed

    def run(x):
        for block in model.blocks:
            x = block(x)
        return x

    assert _sensitivity(run, tokens.detach(), 0, -1) > 0
    changed = tokens.detach().clone()
    changed[:, -1] += torch.randn(changed.shape[-1])  # not a constant: the blocks' LayerNorm would remove that
    assert not torch.equal(run(tokens)[:, 0], run(changed)[:, 0])


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_every_parameter_receives_a_gradient(block_type):
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=10, img_size=32, in_chans=3, block_type=block_type, depth=2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_no_nan_under_bf16_autocast():
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=10, img_size=32, in_chans=3, depth=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 3, 32, 32) * 5)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_precision_sensitive_parameters_stay_fp32_and_skip_weight_decay():
    model = create_model("tiny", depth=1)
    skip = model.no_weight_decay()
    for name in ("pos_embed", "blocks.0.ssm.A_log", "blocks.0.ssm.D", "blocks.0.ssm.dt_bias", "blocks.0.norm1.weight",
                 "blocks.0.attn.qkv.bias", "blocks.0.gate"):
        assert name in skip, name
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.ssm.in_proj.weight", "head.weight", "blocks.0.ssm.x_proj"):
        assert name not in skip, name
    groups = model.param_groups(0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # Muon's matrices are the blocks' Linear weights: not the head, nor the SSM's 2-D D and dt_bias
    matrices = model.hidden_matrices()
    assert {"blocks.0.attn.qkv.weight", "blocks.0.ssm.in_proj.weight", "blocks.0.mlp.fc2.weight"} <= matrices
    assert not matrices & ({"head.weight", "blocks.0.ssm.x_proj"} | skip)
    rest = model.param_groups(0.05, exclude=matrices)
    assert sum(len(g["params"]) for g in rest) == len(list(model.parameters())) - len(matrices)
    ssm = model.blocks[0].ssm
    assert ssm.A_log.dtype == ssm.D.dtype == ssm.dt_bias.dtype == torch.float32


def test_init_follows_s4d_real_and_mamba_dt_ranges():
    ssm = create_model("tiny", depth=1).blocks[0].ssm
    assert torch.allclose(-torch.exp(ssm.A_log[0, 0]), -torch.arange(1, ssm.d_state + 1, dtype=torch.float32))
    dt = torch.nn.functional.softplus(ssm.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert torch.all(ssm.D == 1)


def test_hybrid_gate_gives_both_branches_half_at_init():
    block = Block(16, "hybrid", 2, 4, 4, 1, 2.0, 0.0, 0.0)
    assert torch.allclose(torch.sigmoid(block.gate), torch.full((16,), 0.5))


def test_scan_and_ssm_layer_compile_without_graph_breaks():
    import torch._dynamo as dynamo
    inputs = [t.detach() for t in random_scan_inputs(2, 16, 2, 4, 4)]
    assert dynamo.explain(selective_scan)(*inputs).graph_break_count == 0
    layer = BidirectionalSSM(dim=8, d_state=4, d_conv=4, expand=1)
    assert dynamo.explain(layer)(torch.randn(2, 16, 8)).graph_break_count == 0


def test_fused_triton_kernels_match_the_reference_in_the_interpreter():
    """The CUDA kernels' logic, run on the CPU by Triton's interpreter (no GPU in CI)."""
    pytest.importorskip("triton")
    script = (
        "import torch, selective_scan_triton as k\n"
        "from test_model import random_scan_inputs, rel_err\n"
        "from vision_mamba import selective_scan_ref\n"
        "# lengths that end in a part chunk (the backward's chunks are 2 tokens: 7, 33, 5 and 3 are odd);\n"
        "# the third shape with 16 channels a program: its 3 channel blocks' partial sums of g_Bm, g_Cm\n"
        "for shape, block_e in [((2, 7, 2, 40, 4, 1.0), 64), ((1, 33, 1, 64, 8, 20.0), 64), ((2, 5, 2, 40, 4, 1.0), 16),"
        "                       ((1, 3, 2, 8, 4, 1.0), 64)]:\n"
        "    k.BLOCK_E = k.BWD_BLOCK_E = block_e\n"
        "    inputs = [t.detach() for t in random_scan_inputs(*shape)]\n"
        "    ref = [t.double().requires_grad_() for t in inputs]\n"
        "    y_ref = selective_scan_ref(*ref).flatten(2)  # the operators' (B, L, G*E) layout\n"
        "    inputs = list(k.to_operator_layout(*inputs))\n"
        "    y, checkpoints = k.scan_forward(*inputs, True)\n"
        "    assert rel_err(y, y_ref) < 1e-4, rel_err(y, y_ref)\n"
        "    # without a backward to follow: the same output, and no checkpoints written\n"
        "    y_inference, none = k.scan_forward(*inputs, False)\n"
        "    assert torch.equal(y_inference, y) and none.numel() == 0\n"
        "    g_y = torch.randn_like(y)\n"
        "    for g, g_ref in zip(k.scan_backward(*inputs, checkpoints, g_y), torch.autograd.grad(y_ref, ref, g_y.double())):\n"
        "        assert rel_err(g, g_ref.reshape(g.shape)) < 1e-4, rel_err(g, g_ref.reshape(g.shape))\n"
        "    # the custom-operator registration (schema, fake tensors, no hidden mutation) that\n"
        "    # torch.compile relies on\n"
        "    torch.library.opcheck(k.scan_forward, inputs + [True])\n"
        "    torch.library.opcheck(k.scan_forward, inputs + [False])\n"
        "    torch.library.opcheck(k.scan_backward, inputs + [checkpoints, g_y])\n"
        "print('ok')\n")
    run_in_triton_interpreter(script)


def test_scan_kernels_compile_to_flush_to_zero_exp2():
    """On CUDA each decay exp(delta A) is one ex2.approx.ftz: both scan kernels, compiled here for the H100/H200
    (sm_90) without a GPU, have no exp of the slower kind that guards against denormal results."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import selective_scan_triton as k
    assert k.FAST_EXP2  # this process does not run Triton's interpreter
    launches = [(k._scan_fwd_kernel, dict(N=16, BLOCK_E=k.BLOCK_E, STAGES=k.STAGES, CHUNK=k.CHUNK, SAVE_CHECKPOINTS=True)),
                (k._scan_bwd_kernel, dict(N=16, BLOCK_E=k.BWD_BLOCK_E, STAGES=k.BWD_STAGES, CHUNK=k.CHUNK))]
    for kernel, constants in launches:
        constants["FAST_EXP2"] = True
        signature = {name: "constexpr" if name in constants else "*fp32" if name.endswith("_ptr") else "i32"
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 1})
        ptx = compiled.asm["ptx"]
        assert "ex2.approx.ftz.f32" in ptx and "ex2.approx.f32" not in ptx, kernel.__name__


def test_fused_path_of_selective_scan_in_the_interpreter():
    """selective_scan's CUDA path (3-d tensors into the kernels, the checkpoints written only when a backward
    follows) through autograd, with its kernels run by Triton's interpreter on the CPU."""
    pytest.importorskip("triton")
    script = (
        "import torch, selective_scan_triton as k, vision_mamba as vm\n"
        "from test_model import random_scan_inputs, rel_err\n"
        "vm._use_fused_kernels = lambda u, d_state: True\n"
        "saved = []\n"
        "real_forward = k.scan_forward\n"
        "def spy(*args):\n"
        "    saved.append(args[-1])\n"
        "    return real_forward(*args)\n"
        "k.scan_forward = spy\n"
        "inputs = [t.detach().requires_grad_() for t in random_scan_inputs(2, 7, 2, 40, 4)]\n"
        "ref = [t.detach().double().requires_grad_() for t in inputs]\n"
        "y, y_ref = vm.selective_scan(*inputs), vm.selective_scan_ref(*ref)\n"
        "assert y.shape == y_ref.shape and rel_err(y, y_ref) < 1e-4, rel_err(y, y_ref)\n"
        "g_y = torch.randn_like(y)\n"
        "for g, g_ref in zip(torch.autograd.grad(y, inputs, g_y), torch.autograd.grad(y_ref, ref, g_y.double())):\n"
        "    assert g.shape == g_ref.shape and rel_err(g, g_ref) < 1e-4, rel_err(g, g_ref)\n"
        "with torch.no_grad():\n"
        "    vm.selective_scan(*inputs)\n"
        "vm.selective_scan(*[t.detach() for t in inputs])\n"
        "assert saved == [True, False, False], saved\n"
        "print('ok')\n")
    run_in_triton_interpreter(script)


def test_triton_grid_conv_matches_torch_conv_in_the_interpreter():
    """depthwise_conv_triton's kernels (the grid convs' CUDA path), run on the CPU by Triton's interpreter."""
    pytest.importorskip("triton")
    script = (
        "import torch, torch.nn.functional as F, depthwise_conv_triton as k\n"
        "from test_model import rel_err\n"
        "torch.manual_seed(0)\n"
        "# a channel slice of a wider tensor (the SSM's half of in_proj), 7x7 grids whose images straddle pixel\n"
        "# blocks, channels that do not fill a block; weight-gradient programs that loop over several blocks\n"
        "for batch, side, channels, strided, wgrad_block in [(3, 8, 100, True, 16), (5, 7, 64, False, 16),\n"
        "                                                    (2, 3, 130, False, 4), (9, 7, 70, True, 8)]:\n"
        "    k.WGRAD_BLOCK_P = wgrad_block\n"
        "    wide = torch.randn(batch, side * side, 2 * channels)\n"
        "    x = (wide[..., :channels] if strided else wide[..., :channels].contiguous()).requires_grad_()\n"
        "    weight, bias = torch.randn(channels, 1, 3, 3, requires_grad=True), torch.randn(channels, requires_grad=True)\n"
        "    out = k.dwconv3x3(x, weight, bias, side)\n"
        "    as_grid = lambda t: t.unflatten(1, (side, side)).permute(0, 3, 1, 2)\n"
        "    ref = F.conv2d(as_grid(x), weight, bias, padding=1, groups=channels).permute(0, 2, 3, 1).flatten(1, 2)\n"
        "    assert out.is_contiguous() and rel_err(out, ref) < 1e-6, rel_err(out, ref)\n"
        "    g = torch.randn_like(out)\n"
        "    for grad, ref_grad in zip(torch.autograd.grad(out, (x, weight, bias), g), torch.autograd.grad(ref, (x, weight, bias), g)):\n"
        "        assert grad.shape == ref_grad.shape and rel_err(grad, ref_grad) < 1e-6, rel_err(grad, ref_grad)\n"
        "x = torch.randn(2, 16, 16)[..., :8].requires_grad_()\n"
        "torch.library.opcheck(k.dwconv3x3, (x, torch.randn(8, 1, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True), 4))\n"
        "torch.library.opcheck(k.dwconv3x3_backward, (torch.randn(2, 16, 8), x.detach(), torch.randn(8, 1, 3, 3), 4))\n"
        "print('ok')\n")
    run_in_triton_interpreter(script)


def test_triton_causal_conv_matches_torch_conv_in_the_interpreter():
    """depthwise_conv_triton's causal conv1d kernels (the SSM's conv), run on the CPU by Triton's interpreter."""
    pytest.importorskip("triton")
    script = (
        "import torch, torch.nn.functional as F, depthwise_conv_triton as k\n"
        "from test_model import rel_err\n"
        "torch.manual_seed(0)\n"
        "# a channel slice of a wider tensor, sequences that straddle token blocks, channels that do not fill a block,\n"
        "# tap counts that are and are not powers of two, weight-gradient programs that loop over several blocks\n"
        "for batch, length, channels, taps, strided, wgrad_block in [(3, 49, 100, 4, True, 16), (2, 10, 64, 3, False, 4),\n"
        "                                                            (4, 7, 70, 2, True, 8), (2, 5, 33, 5, False, 16)]:\n"
        "    k.CAUSAL_WGRAD_BLOCK_P = wgrad_block\n"
        "    wide = torch.randn(batch, length, 2 * channels)\n"
        "    x = (wide[..., :channels] if strided else wide[..., :channels].contiguous()).requires_grad_()\n"
        "    weight, bias = torch.randn(channels, 1, taps, requires_grad=True), torch.randn(channels, requires_grad=True)\n"
        "    out = k.causal_conv1d(x, weight, bias)\n"
        "    ref = F.conv1d(x.transpose(1, 2), weight, bias, padding=taps - 1, groups=channels)[..., :length].transpose(1, 2)\n"
        "    assert out.is_contiguous() and rel_err(out, ref) < 1e-6, rel_err(out, ref)\n"
        "    g = torch.randn_like(out)\n"
        "    for grad, ref_grad in zip(torch.autograd.grad(out, (x, weight, bias), g), torch.autograd.grad(ref, (x, weight, bias), g)):\n"
        "        assert grad.shape == ref_grad.shape and rel_err(grad, ref_grad) < 1e-6, rel_err(grad, ref_grad)\n"
        "x = torch.randn(2, 9, 16)[..., :8].requires_grad_()\n"
        "torch.library.opcheck(k.causal_conv1d, (x, torch.randn(8, 1, 4, requires_grad=True), torch.randn(8, requires_grad=True)))\n"
        "torch.library.opcheck(k.causal_conv1d_backward, (torch.randn(2, 9, 8), x.detach(), torch.randn(8, 1, 4)))\n"
        "print('ok')\n")
    run_in_triton_interpreter(script)


def test_triton_causal_conv_kernels_compile_for_the_h200():
    """The interpreter does not run Triton's compiler: compile the causal conv's kernels for the H100/H200 (sm_90)
    here, without a GPU, as they are launched (bf16 tokens, fp32 weights and partial sums), through ptxas to a cubin."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import depthwise_conv_triton as k
    tiles = dict(K=4, BLOCK_C=k.CAUSAL_BLOCK_C)
    launches = [(k._causal_fwd_kernel, dict(tiles, BLOCK_P=k.CAUSAL_BLOCK_P, FORWARD_TAPS=False)),
                (k._causal_fwd_kernel, dict(tiles, BLOCK_P=k.CAUSAL_BLOCK_P, FORWARD_TAPS=True)),
                (k._causal_wgrad_kernel, dict(tiles, KP=4, BLOCK_P=k.CAUSAL_WGRAD_BLOCK_P))]
    for kernel, constants in launches:
        signature = {name: "constexpr" if name in constants else "i32" if not name.endswith("_ptr")
                     else "*bf16" if name in ("x_ptr", "g_ptr", "out_ptr") else "*fp32" for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": k.NUM_WARPS})
        assert compiled.asm["cubin"], kernel.__name__


@pytest.mark.parametrize("conv", ["grid", "causal"])
def test_depthwise_convs_through_the_triton_path_in_the_interpreter(conv):
    """The model's CUDA glue for the depthwise convs (tokens in, tokens out, parameters' gradients), with the kernels
    run by Triton's interpreter on the CPU, against the same model through torch's convs: the grid convs (2d SSM conv,
    ConvFFN) and the SSM's causal conv1d (with vision_mamba.TRITON_CAUSAL_CONV)."""
    pytest.importorskip("triton")
    model_args, kernel, expected_calls = {
        # the SSM's conv (32 channels) and both ConvFFNs (128), on the 8x8 token grid
        "grid": ("depth=2, mlp_conv=True, ssm_conv='2d'", "dwconv3x3", [(3, 64, 32), (3, 64, 128), (3, 64, 128)]),
        # both SSM layers: 64 tokens, 2 directions of 32 channels (tiny's expand is 1)
        "causal": ("depth=4", "causal_conv1d", [(3, 64, 2 * 32)] * 2)}[conv]
    script = (
        "import torch, vision_mamba as vm\n"
        "from test_model import rel_err\n"
        "torch.manual_seed(0)\n"
        f"model = vm.create_model('tiny', embed_dim=32, num_heads=2, block_type='ssm,attention', {model_args}).eval()\n"
        "x = torch.randn(3, 3, 32, 32)\n"
        "def run():\n"
        "    model.zero_grad(set_to_none=True)\n"
        "    out = model(x)\n"
        "    out.square().sum().backward()\n"
        "    return out, {n: p.grad.clone() for n, p in model.named_parameters()}\n"
        "aten, aten_grads = run()  # eval: no random drop path, so the two runs compute the same\n"
        "calls = []\n"
        f"real = vm._triton_conv.{kernel}\n"
        f"vm._triton_conv.{kernel} = lambda *args: calls.append(tuple(args[0].shape)) or real(*args)\n"
        "vm._use_triton_conv = lambda tokens, conv: True\n"
        "vm.TRITON_CAUSAL_CONV = True\n"
        "triton, triton_grads = run()\n"
        f"assert calls == {expected_calls!r}, calls\n"
        "assert rel_err(triton, aten) < 1e-5, rel_err(triton, aten)\n"
        "for name in aten_grads:\n"
        "    assert rel_err(triton_grads[name], aten_grads[name]) < 1e-4, name\n"
        "print('ok')\n")
    run_in_triton_interpreter(script)


def run_in_triton_interpreter(script):
    """Run a script in a fresh interpreter with TRITON_INTERPRET=1 (the repository and tests/ importable)
    and require it to finish by printing 'ok'."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "tests")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
