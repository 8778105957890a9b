"""The benchmark scripts run on the CPU (CI has no GPU) and write well-formed JSON rows."""
import importlib
import json
import os
import re
import statistics

import pytest
import torch

from data_pipeline import DATASET_INFO
from helpers import ROOT, SMALL, run_main, run_script


def test_bench_model_runs_and_writes_rows(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_script("benchmarks/bench_model.py", ["--device", "cpu", "--scan_shape", "2", "16", "8", "4", "--iters", "1",
                                                      "--warmup", "0", "--block_types", "attention", "ssm,attention", "--stem", "conv5",
                                                      "--mlp_conv", "--ssm_conv", "2d", "--batch_size", "2", "--json", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["impl"] for r in rows if r["kind"] == "scan"} == {"fast", "reference"}
    assert {r["block_type"] for r in rows if r["kind"] == "train"} == {"attention", "ssm,attention"}
    assert {(r["stem"], r["mlp_conv"], r["ssm_conv"]) for r in rows if r["kind"] == "train"} == {("conv5", True, "2d")}
    assert all(r["img_per_s"] > 0 for r in rows if r["kind"] == "train")
    assert "speed-up of fast over reference" in result.stdout


def test_bench_train_runs_the_real_data_path(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_script("benchmarks/bench_train.py", ["--device", "cpu", "--num_images", "300", "--block_types", "ssm,attention",
                                                      "--stem", "conv3", "--mlp_conv", "off", "--batch_sizes", "8", "--steps", "1",
                                                      "--warmup", "0", "--profile", "--compile", "regional", "--cudagraphs",
                                                      "--no-triton_causal_conv", "--json", str(out)], env={"VISION_MAMBA_CONV": "shifts"})
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["block_type"] == "ssm,attention" and row["batch_size"] == 8 and row["img_per_s"] > 0
    assert row["compile_mode"] == "regional" and row["cudagraphs"] is False  # CUDA graphs are CUDA only
    # the training loop's own step, with the cifar10 preset's EMA and MixUp/CutMix; --stem and --mlp_conv override the
    # preset's conv5 and ConvFFN
    assert row["ema"] is True and row["mixing"] is True and row["stem"] == "conv3" and row["mlp_conv"] is False
    assert row["stem_width"] == 1.0  # the cifar10 preset's; fashion_mnist's widens its stem
    assert row["conv_backend"] == "shifts"  # the row says how the depthwise convs ran (VISION_MAMBA_CONV)
    assert row["triton_causal_conv"] is False  # and the switch for the SSM's causal conv's Triton kernels (on by default)
    assert "top kernels by self_cpu_time_total" in result.stdout and "aten::" in result.stdout
    assert "# matrix products by input shapes (CPU time per call" in result.stdout
    assert re.search(r"#   aten::(mm|addmm|bmm) +[0-9.]+ us +[0-9]+x  \(", result.stdout)  # e.g. (8, 192) x (192, 768)
    # on a CPU the process's peak resident memory, beside the estimate by which the training script refuses a step
    assert re.search(r"peak RSS [0-9.]+ GiB \(the training script's estimate: [0-9.]+ GiB\)", result.stdout)
    assert row["peak_mem_mib"] > 100 and 0 < row["cpu_step_estimate_mib"] < row["peak_mem_mib"]  # torch alone takes more
    assert 0 < row["data_fraction"] < 10 and row["step_ms"] > 0
    # forward + backward of the matmuls alone is at least 6 x params x images per step
    assert row["gflop_per_step"] * 1e9 >= 6 * row["params_m"] * 1e6 * 8 * 0.5 and row["mfu"] > 0


def test_bench_train_steps_past_the_end_of_an_epoch(tmp_path):
    # 39 training images make 2 batches of 16 an epoch; the benchmark takes 7 (and the data path 4)
    out = tmp_path / "rows.jsonl"
    result = run_script("benchmarks/bench_train.py", ["--device", "cpu", "--num_images", "40", "--batch_sizes", "16",
                                                      "--block_types", "attention", "--steps", "4", "--warmup", "1",
                                                      "--compile", "off", "--triton_causal_conv", "--json", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["batch_size"] == 16 and row["img_per_s"] > 0 and row["data_ms"] > 0
    assert row["triton_causal_conv"] is True  # asked for (it takes effect on CUDA only)


def test_bench_train_imitates_each_preset_dataset_shape(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import bench_train
    for name in bench_train.BENCH_PRESETS:
        info = DATASET_INFO[name]
        train, test, classes = bench_train.synthetic_arrays(info, 40)
        assert train.images.shape == (40, info.in_chans, info.img_size, info.img_size) and train.images.dtype == torch.uint8
        assert len(classes) == info.num_classes and int(train.labels.max()) < info.num_classes and len(test.labels) == 1000


def test_scan_kernel_tuner_checks_every_launch_variant(tmp_path):
    # on the CPU the Triton kernels run in Triton's interpreter; masked channel blocks (E=40) included
    pytest.importorskip("triton")
    out = tmp_path / "rows.jsonl"
    result = run_script("benchmarks/tune_scan_kernels.py", ["--shapes", "2,5,2,40,4", "--block_e", "16", "32", "--warps", "1",
                                                            "--stages", "1", "2", "--maxnreg", "0", "128", "--iters", "1",
                                                            "--json", str(out)],
                        env={"TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["block_e"], r["stages"], r["bwd_maxnreg"]) for r in rows} == {
        (block_e, stages, regs) for block_e in (16, 32) for stages in (1, 2) for regs in (None, 128)}
    assert all(r["agrees"] and r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in rows)


def run_benchmark_main(script, args, monkeypatch, capsys):
    """A benchmark script's main() in this interpreter, its command line in sys.argv (a refusal
    needs no fresh interpreter's seconds of imports)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    monkeypatch.setattr("sys.argv", [f"{script}.py", *args])
    module = importlib.import_module(script)
    return run_main(lambda _: module.main(), args, capsys)


def test_bench_train_rejects_an_unknown_block_type_in_a_pattern(monkeypatch, capsys):
    result = run_benchmark_main("bench_train", ["--block_types", "ssm,mamba"], monkeypatch, capsys)
    assert result.returncode == 2 and "'mamba' is not one of hybrid, ssm, attention" in result.stderr


def test_bench_train_refuses_an_unknown_conv_backend(monkeypatch, capsys):
    # its rows record VISION_MAMBA_CONV: an unknown value would be timed as cuDNN but written down as itself
    monkeypatch.setenv("VISION_MAMBA_CONV", "cudnn")
    result = run_benchmark_main("bench_train", ["--device", "cpu"], monkeypatch, capsys)
    assert result.returncode == 2 and "VISION_MAMBA_CONV='cudnn' is not one of triton, aten, shifts" in result.stderr


def test_run_seeds_trains_each_seed_and_reports_mean_and_spread(tmp_path):
    out = tmp_path / "seeds"
    # from another folder, with a relative --output_dir: the runs write where the caller meant
    result = run_script("benchmarks/run_seeds.py", ["--seeds", "1", "2", "--jobs", "2", "--output_dir", "seeds",
                                                    "--", "--epochs", "1", *SMALL], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    accuracies = [row["test_acc"] for row in summary["runs"]]
    assert [row["seed"] for row in summary["runs"]] == [1, 2] and all(0 <= a <= 1 for a in accuracies)
    assert summary["test_acc_mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev(accuracies))
    # each seed is its own training run, with its own seed in its log
    for seed in (1, 2):
        log = json.loads((out / f"seed{seed}" / "logs" / "vision_mamba_digits" / "training_log.json").read_text())
        assert log["config"]["training"]["seed"] == seed
    assert "test accuracy over 2 run(s)" in result.stdout and "seed(s) 1, 2 shared a device" in result.stdout
    assert all(row["shared_device"] for row in summary["runs"])


def test_run_seeds_refuses_a_bad_config_and_reports_a_failed_run_and_an_unwritable_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "seeds"
    result = run_benchmark_main("run_seeds", ["--seeds", "7", "--output_dir", str(out), "--", "--set", "model.depth=0"],
                                monkeypatch, capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "model.depth" in result.stderr
    assert not out.exists()
    # a run that fails only once it starts (its data is missing) is reported in the table
    result = run_script("benchmarks/run_seeds.py", ["--config", "cifar10", "--seeds", "7", "--output_dir", str(out), "--",
                                                    "--data_dir", str(tmp_path / "no_data"), "--set", "data.download=false"])
    assert result.returncode == 1
    (row,) = json.loads((out / "summary.json").read_text())["runs"]
    assert row["exit_code"] == 2 and "test_acc" not in row and "see seed7.txt" in result.stdout
    assert row["shared_device"] is False and "shared a device" not in result.stdout
    assert "CIFAR10 not found" in (out / "seed7.txt").read_text()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_benchmark_main("run_seeds", ["--output_dir", str(blocker / "sub")], monkeypatch, capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "cannot write to --output_dir" in result.stderr


def test_gpu_kernel_time_counts_only_what_ran_on_the_gpu(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import types

    import bench_train
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [types.SimpleNamespace(device_type=cuda, self_device_time_total=120.0, is_user_annotation=False),
              types.SimpleNamespace(device_type=cpu, self_device_time_total=0.0),  # an aten op: its kernels are listed apart
              types.SimpleNamespace(device_type=cuda, self_device_time_total=30.5, is_user_annotation=False),
              # a compiled graph's span on the GPU, over kernels counted above
              types.SimpleNamespace(device_type=cuda, self_device_time_total=140.0, is_user_annotation=True)]
    assert bench_train.gpu_kernel_us(types.SimpleNamespace(key_averages=lambda: events)) == 150.5


@pytest.mark.parametrize("groups, stride, input_grad", [(1, 1, True), (1, 2, False), (4, 1, True), (16, 1, True), (16, 2, False)])
def test_conv_backward_flops_count_each_gradient_as_one_forward(monkeypatch, groups, stride, input_grad):
    # torch's formula ignores groups in the weight gradient (a depthwise conv counted `channels` times too high);
    # the benchmark's counts each gradient asked for as one forward convolution, as torch does when groups is 1
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import bench_train
    from torch.utils.flop_counter import FlopCounterMode
    conv = torch.nn.Conv2d(16, 32, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(2, 16, 8, 8, requires_grad=input_grad)

    def count(custom_mapping):
        with FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
            conv(x).sum().backward()
        return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    ours = count({torch.ops.aten.convolution_backward: bench_train.conv_backward_flops})
    forward = 2 * 2 * 32 * (16 // groups) * 9 * (8 // stride) ** 2  # 2 x batch x C_out x C_in/groups x k^2 x output pixels
    assert ours["aten.convolution"] == forward
    assert ours["aten.convolution_backward"] == forward * (2 if input_grad else 1)
    if groups == 1:
        assert count({}) == ours


def test_bench_train_asks_for_cuda_graphs_as_the_preset_does_unless_told(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import bench_train

    class Asked(Exception):
        pass

    def record(requested, compile_mode, device):
        raise Asked(requested)
    monkeypatch.setattr(bench_train, "cudagraphs_enabled", record)
    for config, flags, expected in [("cifar10", [], True), ("mnist", [], False),
                                    ("cifar10", ["--no-cudagraphs"], False), ("mnist", ["--cudagraphs"], True)]:
        monkeypatch.setattr("sys.argv", ["bench_train.py", "--device", "cpu", "--config", config, "--num_images", "40",
                                         "--batch_sizes", "16", "--block_types", "attention", *flags])
        with pytest.raises(Asked) as asked:
            bench_train.main()
        assert asked.value.args == (expected,), (config, flags)


def test_bench_model_cudagraphs_compile_for_replay_and_mark_every_step(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import bench_model
    options, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: options.append(kwargs) or module)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(True))
    for cudagraphs in (True, False):
        options.clear(), marks.clear()
        monkeypatch.setattr("sys.argv", ["bench_model.py", "--device", "cpu", "--skip_scan", "--sizes", "tiny",
                                         "--block_types", "attention", "--batch_size", "2", "--warmup", "0", "--iters", "2",
                                         "--compile", *(["--cudagraphs"] if cudagraphs else [])])
        bench_model.main()
        assert options == [{"mode": "reduce-overhead"} if cudagraphs else {}]
        assert len(marks) == (3 if cudagraphs else 0)  # the first (compiling) step and the two timed ones


def test_bench_model_refuses_cudagraphs_without_compile(monkeypatch, capsys):
    result = run_benchmark_main("bench_model", ["--device", "cpu", "--skip_scan", "--cudagraphs"], monkeypatch, capsys)
    assert result.returncode == 2 and "--cudagraphs replays compiled graphs: add --compile" in result.stderr


def test_bench_train_set_overrides_any_config_value_and_records_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.jsonl"
    common = ["--device", "cpu", "--num_images", "40", "--batch_sizes", "8", "--block_types", "hybrid", "--steps", "1",
              "--warmup", "0", "--json", str(out), "--set", "model.depth=1"]
    for extra in ([], ["--set", "model.expand=2"]):
        result = run_script("benchmarks/bench_train.py", [*common, *extra])
        assert result.returncode == 0, result.stderr[-2000:]
    default, wide = [json.loads(line) for line in out.read_text().splitlines()]
    assert default["overrides"] == {"model.depth": 1} and wide["overrides"] == {"model.depth": 1, "model.expand": 2}
    assert wide["params_m"] > default["params_m"]  # the SSM twice as wide inside
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import bench_train
    for bad, fragment in ((["--set", "model.expand"], "expected section.key=value"), (["--set", "model.expand=0"], "model.expand")):
        monkeypatch.setattr("sys.argv", ["bench_train.py", *common, *bad])
        with pytest.raises(SystemExit) as exit_:
            bench_train.main()
        assert exit_.value.code == 2 and fragment in capsys.readouterr().err
