"""CUDA-only checks of the fused Triton scan (skipped without a GPU; CPU coverage of the same
kernels is in test_model.py through Triton's interpreter)."""
import math

import pytest
import torch

from test_model import random_scan_inputs, rel_err
from vision_mamba import create_model, selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("shape", [(2, 7, 2, 40, 4, 1.0), (4, 64, 2, 192, 16, 1.0), (2, 1024, 1, 64, 16, 30.0)])
def test_fused_scan_matches_reference_on_cuda(shape):
    batch, length, groups, inner, d_state, scale = shape
    inputs = [t.detach().cuda().requires_grad_() for t in random_scan_inputs(batch, length, groups, inner, d_state, scale)]
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    y, y_ref = selective_scan(*inputs), selective_scan_ref(*ref_inputs)
    assert rel_err(y, y_ref) < 1e-4
    g_y = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, inputs, g_y), torch.autograd.grad(y_ref, ref_inputs, g_y.double())):
        assert rel_err(g, g_ref) < 1e-4


def test_fused_scan_gradients_are_deterministic():
    # partial sums added up by torch, no atomics: the same inputs give bitwise the same gradients
    from selective_scan_triton import scan_backward, scan_forward, to_operator_layout
    inputs = to_operator_layout(*[t.detach().cuda() for t in random_scan_inputs(64, 64, 2, 192, 16)])
    _, checkpoints = scan_forward(*inputs, True)
    g_y = torch.randn(64, 64, 2 * 192, device="cuda")
    first, second = (scan_backward(*inputs, checkpoints, g_y) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_fused_scan_under_bf16_autocast_and_compile():
    torch.manual_seed(0)
    model = create_model("tiny", depth=2).cuda().eval()  # eval: no random drop path
    compiled = torch.compile(model)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager, fast = model(x).float(), compiled(x).float()
    assert torch.isfinite(fast).all() and rel_err(fast, eager) < 2e-2
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        compiled(x).float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    import torch._dynamo as dynamo
    inputs = [t.detach().cuda() for t in random_scan_inputs(2, 16, 2, 64, 16)]
    assert dynamo.explain(selective_scan)(*inputs).graph_break_count == 0


def test_compiled_gradients_equal_eager_gradients():
    # the compiled graph must see every write of the fused kernels (partial-sum buffers included): any missed
    # mutation would show up here as wrong or garbage gradients
    torch.manual_seed(0)
    model = create_model("tiny", depth=2).cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    model(x).square().mean().backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.compile(model)(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert rel_err(p.grad, eager[name]) < 1e-3, name


@pytest.mark.xfail(reason="inductor under bf16 drifts from eager (pytorch/pytorch#168126, #168186; seen on torch "
                          "2.11, with attention inside the graph and behind attention_core alike)", strict=False)
def test_compiled_eval_over_changing_batch_sizes_equals_eager():
    # evaluation ends on a partial batch, so the compiled model meets new (dynamic) batch sizes;
    # under bf16 the compiled model must be as close to the fp32 result as eager bf16 is
    torch.manual_seed(0)
    model = create_model("tiny", depth=2).cuda().eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        for batch in (64, 37, 64, 5, 100, 37):
            x = torch.randn(batch, 3, 32, 32, device="cuda")
            exact = model(x)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                fast, eager = compiled(x).float(), model(x).float()
            assert torch.isfinite(fast).all()
            assert rel_err(fast, exact) < 2 * rel_err(eager, exact) + 1e-3, (batch, rel_err(fast, exact), rel_err(eager, exact))


def test_training_step_never_waits_for_the_gpu():
    # one host-GPU synchronisation a step (AveragedModel's update did one) lets the GPU run dry while the next
    # step is queued; train_step with EMA, clipping and fused AdamW must have none
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from bench_train import count_syncs
    from config import get_preset
    from train_vision_mamba import make_step_parts, train_step
    torch.manual_seed(0)
    t = get_preset("cifar10").training
    model = create_model("tiny", depth=2).cuda()
    criterion, optimizer, scaler, ema = make_step_parts(model, t, t.lr, torch.device("cuda"), torch.bfloat16)
    images, labels = torch.randn(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    step = lambda: train_step(model, model, images, labels, criterion, optimizer, scaler, ema, torch.bfloat16, t.grad_clip)  # noqa: E731
    step()  # first calls may set things up (the EMA's copy, optimizer state)
    assert count_syncs(step, 3) == {}


@pytest.mark.parametrize("batch,side,channels,strided", [(64, 8, 768, False), (64, 8, 192, True), (37, 7, 100, True)])
def test_triton_grid_conv_matches_torch_conv_on_cuda(batch, side, channels, strided):
    # bf16 tokens as the model feeds them (strided: the SSM's half of in_proj's output), against an fp64 conv
    from depthwise_conv_triton import dwconv3x3
    torch.manual_seed(0)
    wide = torch.randn(batch, side * side, 2 * channels, device="cuda", dtype=torch.bfloat16)
    x = (wide[..., :channels] if strided else wide[..., :channels].contiguous()).requires_grad_()
    weight = torch.randn(channels, 1, 3, 3, device="cuda", requires_grad=True)
    bias = torch.randn(channels, device="cuda", requires_grad=True)
    out = dwconv3x3(x, weight, bias, side)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = torch.nn.functional.conv2d(ref_inputs[0].unflatten(1, (side, side)).permute(0, 3, 1, 2), *ref_inputs[1:],
                                     padding=1, groups=channels).permute(0, 2, 3, 1).flatten(1, 2)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2  # bf16 output rounding
    g = torch.randn_like(out)
    grads, ref_grads = torch.autograd.grad(out, (x, weight, bias), g), torch.autograd.grad(ref, ref_inputs, g.double())
    for grad, ref_grad in zip(grads, ref_grads):
        assert rel_err(grad, ref_grad) < 1e-2
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(dwconv3x3(x, weight, bias, side),
                                                                            (x, weight, bias), g)))  # deterministic


@pytest.mark.parametrize("batch,length,channels,taps,strided", [(64, 49, 384, 4, False), (64, 64, 192, 4, True),
                                                                 (37, 7, 100, 3, True)])
def test_triton_causal_conv_matches_torch_conv_on_cuda(batch, length, channels, taps, strided):
    # bf16 tokens as the model feeds them, against an fp64 conv
    from depthwise_conv_triton import causal_conv1d
    torch.manual_seed(0)
    wide = torch.randn(batch, length, 2 * channels, device="cuda", dtype=torch.bfloat16)
    x = (wide[..., :channels] if strided else wide[..., :channels].contiguous()).requires_grad_()
    weight = torch.randn(channels, 1, taps, device="cuda", requires_grad=True)
    bias = torch.randn(channels, device="cuda", requires_grad=True)
    out = causal_conv1d(x, weight, bias)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = torch.nn.functional.conv1d(ref_inputs[0].transpose(1, 2), *ref_inputs[1:], padding=taps - 1,
                                     groups=channels)[..., :length].transpose(1, 2)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2  # bf16 output rounding
    g = torch.randn_like(out)
    grads, ref_grads = torch.autograd.grad(out, (x, weight, bias), g), torch.autograd.grad(ref, ref_inputs, g.double())
    for grad, ref_grad in zip(grads, ref_grads):
        assert rel_err(grad, ref_grad) < 1e-2
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(causal_conv1d(x, weight, bias),
                                                                            (x, weight, bias), g)))  # deterministic


@pytest.mark.parametrize("backend", ["shifts", "triton", "triton_causal"])
def test_compiled_conv_backends_equal_eager_on_cuda(backend, monkeypatch):
    # VISION_MAMBA_CONV=shifts (inductor's fused version of the depthwise convs) and =triton (the grid convs as
    # depthwise_conv_triton's kernels; triton_causal: the SSM's causal conv1d too, vision_mamba.TRITON_CAUSAL_CONV),
    # compiled, against the eager cuDNN convs
    import vision_mamba as vm
    torch.manual_seed(0)
    model = create_model("tiny", depth=2, block_type="ssm,attention", mlp_conv=True,
                         ssm_conv="2d" if backend == "triton" else "1d").cuda().eval()
    causal = backend == "triton_causal"
    backend = "triton" if causal else backend
    x = torch.randn(8, 3, 32, 32, device="cuda")
    monkeypatch.setattr(vm, "CONV_BACKEND", "aten")  # the reference: torch's convs (the default is the Triton kernels)
    eager = model(x)
    eager.square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(vm, "CONV_BACKEND", backend)
    monkeypatch.setattr(vm, "TRITON_CAUSAL_CONV", causal)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model)(x)
        compiled.square().mean().backward()
    finally:
        torch._dynamo.reset()  # no later test may reuse a graph traced with the setting on
    assert rel_err(compiled, eager) < 1e-4
    for name, p in model.named_parameters():
        assert rel_err(p.grad, eager_grads[name]) < 1e-3, name


@pytest.mark.parametrize("ddp,dtype,sam_rho,mix_prob", [(False, None, 0.0, 0.0), (True, None, 0.0, 0.0),
                                                        (False, torch.bfloat16, 0.0, 0.0), (False, torch.bfloat16, 0.05, 0.0),
                                                        (True, None, 0.05, 0.0), (False, torch.bfloat16, 0.0, 0.5)])
def test_training_through_cuda_graphs_follows_eager_training(ddp, dtype, sam_rho, mix_prob, tmp_path, monkeypatch):
    # training.cudagraphs: the compiled graphs recorded once and replayed (their outputs' memory reused
    # every step) must train as the eager model does, replays included; under DDP (one NCCL rank here:
    # torchrun's two are run on the device) the all-reduce hooks fire between the backward's replays;
    # under bf16 attention's backward is SDPA's fused kernel, called from inside the recorded graph;
    # a SAM step replays the forward and backward twice before the optimizer's step; with data.mix_prob mixed
    # and unmixed batches (soft and one-hot targets) take turns through the same recorded graphs
    import torch.distributed as dist
    import vision_mamba as vm
    from config import get_preset
    from data_pipeline import mix_batch
    from train_vision_mamba import compile_model, make_step_parts, train_step
    t = get_preset("cifar10").training
    fused_calls, fused = [], vm.fused_attention_backward
    monkeypatch.setattr(vm, "fused_attention_backward", lambda *args: fused_calls.append(1) or fused(*args))
    if ddp:
        dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    losses = {}
    try:
        for cudagraphs in (False, True):
            torch.manual_seed(0)
            model = create_model("tiny", depth=2, block_type="ssm,attention", drop_path=0.0).cuda()
            criterion, optimizer, scaler, ema = make_step_parts(model, t, t.lr, torch.device("cuda"), dtype)
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0]) if ddp else model
            net = compile_model(net, "on", cudagraphs=True) if cudagraphs else net
            torch.manual_seed(1)
            losses[cudagraphs] = []
            mixed = []
            for step in range(6):  # the first calls record, the later ones replay
                images, labels = torch.randn(32, 3, 32, 32, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
                targets = labels
                if mix_prob:
                    plain = images
                    images, targets = mix_batch(images, labels, 10, 0.8, 1.0, 0, 0, step, mix_prob)
                    mixed.append(images is not plain)
                _, loss = train_step(net, model, images, targets, criterion, optimizer, scaler, ema, dtype, t.grad_clip,
                                     cudagraphs, sam_rho)
                losses[cudagraphs].append(loss.item())
            torch._dynamo.reset()
    finally:
        if ddp:
            dist.destroy_process_group()
    assert all(math.isfinite(x) for x in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)
    assert bool(fused_calls) == (dtype is not None)
    assert not mix_prob or len(set(mixed)) == 2  # both kinds of batch were trained on


def test_fused_attention_backward_matches_the_reference():
    # SDPA's fused backward (bf16 in and out) against the reference's, computed in fp64 from the same bf16
    # inputs: no further from it than bf16 rounding of its own products allows; masks and fp32 keep the reference
    import vision_mamba as vm
    torch.manual_seed(0)
    for heads, length in ((3, 64), (2, 49)):
        q, k, v, grad = (torch.randn(16, heads, length, 64, device="cuda").bfloat16() for _ in range(4))
        assert vm.fused_backward_applies(q, None)
        fused = vm.attention_core_backward(q, k, v, None, 0.125, grad)
        exact = vm.attention_backward_ref(q.double(), k.double(), v.double(), None, 0.125, grad.double())
        for got, want in zip(fused, exact):
            assert got.dtype == torch.bfloat16 and rel_err(got, want) < 2e-2
        torch.library.opcheck(vm.attention_core_backward, (q, k, v, None, 0.125, grad))  # laid out as its fake
    assert not vm.fused_backward_applies(q.float(), None)
    assert not vm.fused_backward_applies(q, ~torch.eye(length, dtype=torch.bool, device="cuda"))
    torch.use_deterministic_algorithms(True, warn_only=True)  # training.deterministic
    try:
        assert not vm.fused_backward_applies(q, None)
    finally:
        torch.use_deterministic_algorithms(False)


def test_checkpoint_snapshot_of_gpu_tensors_is_a_host_copy_made_before_training_goes_on():
    from checkpoints import to_host
    weights, transposed = torch.randn(1000, device="cuda"), torch.randn(30, 40, device="cuda").t()
    expected = {"w": weights.cpu(), "t": transposed.cpu()}
    host = to_host({"model": {"w": weights, "t": transposed}, "steps": [torch.tensor(3.0, device="cuda")], "epoch": 2})
    weights.add_(1)
    transposed.mul_(2)
    assert all(host["model"][k].device.type == "cpu" and torch.equal(host["model"][k], expected[k]) for k in expected)
    assert host["steps"][0].item() == 3.0 and host["epoch"] == 2
