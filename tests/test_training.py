import copy
import os
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_vision_mamba
from config import ConfigError, apply_overrides, load_config
from data_pipeline import DATASET_INFO
from helpers import assert_one_line_error, assert_png, final_weights, read_log, run_main, run_script, train_args
from vision_mamba import VisionMamba, create_model

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time", "img_per_s"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert train_vision_mamba.main(train_args(out, "--set", "logging.save_every=1", "--set", "logging.keep_last=2", epochs=3)) == 0
    return out


def test_training_writes_every_output(digits_run):
    logs = digits_run / "logs" / "vision_mamba_digits"
    log = read_log(digits_run)
    assert {"config", "environment", "epochs", "test_loss", "test_acc"} <= set(log)
    assert log["environment"]["torch"] == torch.__version__ and log["environment"]["device"] == "cpu"
    assert len(log["epochs"]) == 3 and all(EPOCH_KEYS <= set(row) for row in log["epochs"])
    assert all(0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1 for row in log["epochs"])
    assert 0 <= log["test_acc"] <= 1 and log["config"]["model"]["depth"] == 2
    # where the whole run's time went besides the epochs: loading the data, the final test
    epochs_s = sum(row["epoch_time"] for row in log["epochs"])
    assert 0 < log["data_load_s"] and 0 < log["test_s"] and log["data_load_s"] + epochs_s + log["test_s"] <= log["total_time_s"]
    assert_png(logs / "training_curves.png")
    assert_png(logs / "confusion_matrix.png")

    checkpoints = digits_run / "checkpoints" / "vision_mamba_digits"
    names = sorted(os.listdir(checkpoints))
    assert names == ["best_model.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth", "final_model.pth", "last_checkpoint.pth"]
    for name in names:
        state = torch.load(checkpoints / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "best_metric", "early_stopping", "rng",
                "config", "class_names", "versions"} <= set(state)
    assert torch.load(checkpoints / "final_model.pth", weights_only=True)["epoch"] == 3
    # the periodic checkpoints link to the epoch's one serialisation and keep it when the next one is written
    assert torch.load(checkpoints / "checkpoint_epoch_2.pth", weights_only=True)["epoch"] == 2

    events = EventAccumulator(str(digits_run / "tensorboard" / "vision_mamba_digits"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "throughput/img_per_s", "test/acc"} <= tags
    assert len(events.Scalars("loss/train")) == 3
    hparams_files = [f for _, _, files in os.walk(digits_run / "tensorboard") for f in files if f.startswith("events")]
    assert len(hparams_files) >= 1


def test_lr_schedule_warms_up_then_decays(digits_run):
    lrs = [row["lr"] for row in read_log(digits_run)["epochs"]]
    assert lrs[0] > lrs[-1] and lrs[-1] >= 1e-5 * 0.999


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    # with Muon and AdamW as one optimizer, the harder state to restore; AdamW alone resumes in test_robustness's killed runs
    straight = tmp_path / "straight"
    assert train_vision_mamba.main(train_args(straight, "--set", "logging.save_every=1", "--set", "logging.keep_last=5",
                                              "--set", "training.optimizer=muon", epochs=4)) == 0
    # a second experiment that has only the state after epoch 2, then resumes from it
    resumed = tmp_path / "resumed"
    os.makedirs(resumed / "checkpoints" / "vision_mamba_digits")
    shutil.copy(straight / "checkpoints" / "vision_mamba_digits" / "checkpoint_epoch_2.pth",
                resumed / "checkpoints" / "vision_mamba_digits" / "checkpoint_epoch_2.pth")
    assert train_vision_mamba.main(train_args(resumed, "--resume", "auto", epochs=4)) == 0
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_log(straight), read_log(resumed)
    assert [r["val_loss"] for r in log_a["epochs"]] == [r["val_loss"] for r in log_b["epochs"]]
    assert log_a["test_acc"] == log_b["test_acc"]


def test_resuming_a_finished_run_keeps_its_log(tmp_path, capsys):
    assert train_vision_mamba.main(train_args(tmp_path, epochs=2)) == 0
    before = read_log(tmp_path)
    capsys.readouterr()
    assert train_vision_mamba.main(train_args(tmp_path, "--resume", "auto", epochs=2)) == 0
    after = read_log(tmp_path)
    for key in ("best_epoch", "best_val", "monitor", "test_acc", "epochs"):
        assert after[key] == before[key], key
    assert f"best epoch {before['best_epoch']}," in capsys.readouterr().out


def test_resume_with_more_epochs_continues_the_longer_schedule(tmp_path, capsys):
    # a finished 2-epoch run extended to 4: its last epochs follow a 4-epoch schedule from step 2 x steps,
    # ending at min_lr, instead of a 2-epoch cosine restarting past its end
    longer = tmp_path / "longer"
    assert train_vision_mamba.main(train_args(longer, epochs=4)) == 0
    extended = tmp_path / "extended"
    assert train_vision_mamba.main(train_args(extended, epochs=2)) == 0
    capsys.readouterr()
    assert train_vision_mamba.main(train_args(extended, "--resume", "auto", epochs=4)) == 0
    assert "lr schedule rebuilt for the changed training.epochs" in capsys.readouterr().out
    lrs = [row["lr"] for row in read_log(extended)["epochs"]]
    assert len(lrs) == 4 and lrs[2:] == [row["lr"] for row in read_log(longer)["epochs"]][2:]


def test_resume_refuses_a_changed_plateau_schedule_and_a_changed_batch_size(tmp_path, capsys):
    args = train_args(tmp_path, "--set", "training.scheduler=plateau", epochs=1)
    assert train_vision_mamba.main(args) == 0
    result = run_main(train_vision_mamba.main, train_args(tmp_path, "--set", "training.scheduler=plateau", "--resume", "auto",
                                                          epochs=3), capsys)
    assert_one_line_error(result, "training.epochs changed since the checkpoint", "plateau")
    result = run_main(train_vision_mamba.main, train_args(tmp_path, "--set", "training.scheduler=plateau", "--resume", "auto",
                                                          "--batch_size", "16", epochs=1), capsys)
    assert_one_line_error(result, "data.batch_size 16 differs from the checkpoint's 32")


def test_resume_refuses_a_changed_architecture_but_takes_new_regularisation(tmp_path, capsys):
    assert train_vision_mamba.main(train_args(tmp_path, epochs=1)) == 0
    last = tmp_path / "checkpoints" / "vision_mamba_digits" / "last_checkpoint.pth"
    before = last.read_bytes()
    for change, message in [(["--set", "model.embed_dim=48"], "model.embed_dim 48 differs from the checkpoint's 32"),
                            (["--model_size", "small"], "model.model_size 'small' differs from the checkpoint's 'tiny'"),
                            (["--set", "model.block_type=ssm"], "model.block_type 'ssm' differs from the checkpoint's 'hybrid'"),
                            (["--set", "data.img_size=16"], "data.img_size 16 differs from the checkpoint's 8")]:
        with pytest.raises(train_vision_mamba.ConfigError, match=message):
            train_vision_mamba.prepare(train_args(tmp_path, "--resume", "auto", *change, epochs=2))
    result = run_main(train_vision_mamba.main, train_args(tmp_path, "--resume", "auto", "--set", "model.embed_dim=48", epochs=2),
                      capsys)
    assert_one_line_error(result, "model.embed_dim 48 differs from the checkpoint's 32", "start a new run")
    assert last.read_bytes() == before
    # the size table's own value, the native image size and a new drop path change no parameter
    _, config, _, _ = train_vision_mamba.prepare(train_args(tmp_path, "--resume", "auto", "--set", "model.embed_dim=32",
                                                             "--set", "data.img_size=8", "--set", "model.drop_path=0.3", epochs=2))
    assert config.model.drop_path == 0.3
    # --config names the experiment: another dataset's preset is refused, the run's own preset without
    # the run's --set values resumes with them
    with pytest.raises(train_vision_mamba.ConfigError, match="data.dataset 'mnist' differs from the checkpoint's 'digits'"):
        train_vision_mamba.prepare(train_args(tmp_path, "--resume", str(last), config="mnist"))
    _, config, _, _ = train_vision_mamba.prepare(["--config", "digits", "--output_dir", str(tmp_path), "--resume", "auto"])
    assert config.model.embed_dim == 32 and config.model.depth == 2
    # the stored optimizer state is AdamW's: Muon cannot take it over
    with pytest.raises(train_vision_mamba.ConfigError, match="training.optimizer 'muon' differs from the checkpoint's 'adamw'"):
        train_vision_mamba.prepare(train_args(tmp_path, "--resume", "auto", "--set", "training.optimizer=muon", epochs=2))


def test_early_stopping_stops_and_keeps_the_best(tmp_path):
    # an improvement of more than 1.0 in accuracy is impossible: every epoch after the first is "bad"
    args = train_args(tmp_path, "--set", "training.early_stopping_patience=2", "--set", "training.early_stopping_min_delta=1.0",
                      "--set", "training.monitor=val_acc", epochs=6)
    assert train_vision_mamba.main(args) == 0
    log = read_log(tmp_path)
    assert len(log["epochs"]) == 3 and log["stopped_early"]["epoch"] == 3 and log["best_epoch"] == 1
    best = torch.load(tmp_path / "checkpoints" / "vision_mamba_digits" / "best_model.pth", weights_only=True)
    assert best["epoch"] == 1


@pytest.mark.parametrize("args,fragments", [
    (["--config", "nope"], ["unknown config 'nope'", "digits"]),
    (["--lr", "-1"], ["training.lr must be > 0"]),
    (["--batch_size", "0"], ["data.batch_size must be >= 1"]),
    (["--model_size", "giant"], ["model.model_size", "tiny, small, base, large"]),
    (["--set", "training.scheduler=linear"], ["training.scheduler", "cosine"]),
    (["--epochs", "ten"], ["--epochs", "invalid int"]),
    (["--set", "training.lr=abc"], ["training.lr", "expected float"]),
    (["--resume", "missing.pth"], ["missing.pth does not exist"]),
    (["--device", "tpu"], ["training.device", "auto, cpu, cuda"]),
    (["--set", "model.patch_size=3"], ["img_size 8 is not divisible by patch_size 3", "model.patch_size"]),
    (["--set", "model.stem=conv3", "--set", "model.patch_size=1"], ["patch_size must be even", "model.patch_size"]),
    (["--set", "model.stem_width=0"], ["model.stem_width must be > 0"]),
    (["--set", "model.stem=patch", "--set", "model.stem_width=2"], ["no convs to widen", "model.stem_width"]),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, fragments, capsys):
    result = run_main(train_vision_mamba.main, ["--output_dir", str(tmp_path / "out"), *args], capsys)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,fragment", [(["--config", "nope"], "unknown config 'nope'"),
                                           (["--epochs", "ten"], "invalid int")])
def test_the_script_itself_exits_2_with_one_line(tmp_path, args, fragment):
    # the cases above call main() in this interpreter; here the real entry point, one case from
    # the config checks and one from argparse
    result = run_script("train_vision_mamba.py", ["--output_dir", str(tmp_path / "out"), *args], timeout=120)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,value,fragment", [("VISION_MAMBA_CONV", "cudnn", "triton, aten, shifts"),
                                                  ("VISION_MAMBA_SCAN", "Torch", "auto, torch")])
def test_unknown_backend_setting_exits_2_with_one_line(tmp_path, monkeypatch, capsys, name, value, fragment):
    # the model would ignore it without a word (cudnn: a plausible guess for aten)
    monkeypatch.setenv(name, value)
    result = run_main(train_vision_mamba.main, ["--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(result, f"{name}={value!r}", fragment)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert train_vision_mamba.main(train_args(blocker / "sub")) == 2
    assert "not a folder" in capsys.readouterr().err


def test_existing_experiment_is_refused_unless_resume_or_overwrite(digits_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(digits_run, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert train_vision_mamba.main(train_args(out)) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume auto" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    assert train_vision_mamba.main(train_args(out, "--overwrite", epochs=1)) == 0
    assert len(read_log(out)["epochs"]) == 1
    assert not (out / "checkpoints" / "vision_mamba_digits" / "checkpoint_epoch_3.pth").exists()


def test_nan_loss_stops_with_epoch_and_step_and_never_saves_a_best_model(tmp_path, capsys):
    args = train_args(tmp_path, "--set", "training.lr=1e30", "--set", "training.grad_clip=0", "--set", "training.warmup_epochs=0",
                      epochs=2)
    assert train_vision_mamba.main(args) == 1
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "epoch 1, step" in err and "lower --lr" in err
    assert "non-finite weights in " in err  # where it went wrong, for the bug report
    assert "training.compile=off" not in err  # an eager run is not told to stop compiling
    assert not (tmp_path / "checkpoints" / "vision_mamba_digits" / "best_model.pth").exists()


def test_divergence_remedies_name_compilation_first_only_for_compiled_mixed_precision():
    assert train_vision_mamba.divergence_remedies(True, torch.bfloat16).startswith(
        "usual remedies: --set training.compile=all_but_attention or off")
    for compiled, dtype in [(True, None), (False, torch.bfloat16), (False, None)]:
        remedies = train_vision_mamba.divergence_remedies(compiled, dtype)
        assert "compile" not in remedies and "lower --lr" in remedies


def test_divergence_report_names_the_first_module_with_non_finite_output():
    model = train_vision_mamba.build_model(load_config("digits"), DATASET_INFO["digits"])
    fc2 = model.blocks[1].mlp.fc2
    fc2.forward = lambda x: x.new_full(x.shape[:-1] + (fc2.out_features,), float("inf"))
    where = train_vision_mamba.locate_nonfinite(model, torch.randn(2, 1, 8, 8), torch.device("cpu"), None)
    assert where == "first non-finite output: blocks.1.mlp.fc2"
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    assert "non-finite weights in head.bias" in train_vision_mamba.locate_nonfinite(model, torch.randn(2, 1, 8, 8),
                                                                                   torch.device("cpu"), None)


def test_missing_data_writes_nothing_and_overwrite_keeps_the_old_run(digits_run, tmp_path, capsys):
    result = run_main(train_vision_mamba.main, ["--config", "cifar10", "--data_dir", str(tmp_path / "nodata"),
                                                "--set", "data.download=false", "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(result, "CIFAR10 not found", "cifar-10-python.tar.gz")
    assert not (tmp_path / "out").exists()
    # --overwrite of an existing experiment whose new run cannot start leaves the old outputs alone
    out = tmp_path / "copy"
    shutil.copytree(digits_run, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    result = run_main(train_vision_mamba.main, train_args(out, "--overwrite", "--set", "data.batch_size=100000"), capsys)
    assert_one_line_error(result, "data.batch_size 100000 is larger than the training split")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def _lrs(scheduler_name, steps_per_epoch=10, epochs=6, monitored=None, **overrides):
    from config import apply_overrides, get_preset
    config = apply_overrides(get_preset("digits"), {"training.scheduler": scheduler_name, "training.epochs": epochs,
                                                    "training.lr": 1e-2, "training.min_lr": 1e-4, "training.warmup_epochs": 1.0,
                                                    **{f"training.{k}": v for k, v in overrides.items()}})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.training.lr)
    per_step, plateau, warmup = train_vision_mamba.make_schedulers(optimizer, config.training, steps_per_epoch)
    lrs = []
    for step in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if plateau is None or step < warmup:
            per_step.step()
        if plateau is not None and (step + 1) % steps_per_epoch == 0 and step + 1 >= warmup:
            plateau.step(monitored[(step + 1) // steps_per_epoch - 1])
    return lrs


def test_schedules_warm_up_then_follow_their_shape():
    cosine = _lrs("cosine")
    assert cosine[0] < 1e-3 and max(cosine) == pytest.approx(1e-2, rel=1e-6)  # linear warm-up over the first epoch
    assert cosine[10] == pytest.approx(1e-2) and cosine[-1] < 2e-4 and all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    step = _lrs("step", step_epochs=2, step_gamma=0.5)
    assert step[10] == pytest.approx(1e-2) and step[29] == pytest.approx(1e-2) and step[30] == pytest.approx(5e-3)
    constant = _lrs("constant")
    assert all(lr == pytest.approx(1e-2) for lr in constant[10:])
    plateau = _lrs("plateau", monitored=[0.5, 0.6, 0.6, 0.6, 0.6, 0.6], plateau_patience=1, plateau_factor=0.5,
                   monitor="val_acc")
    # best at epoch 2; epochs 3 and 4 bring nothing, more than the patience of 1: halved from epoch 5 on
    assert plateau[39] == pytest.approx(1e-2) and plateau[40] == pytest.approx(5e-3) and plateau[-1] == pytest.approx(5e-3)


def test_plateau_schedule_trains_and_resumes(tmp_path):
    args = train_args(tmp_path, "--set", "training.scheduler=plateau", "--set", "training.plateau_patience=0", epochs=2)
    assert train_vision_mamba.main(args) == 0
    state = torch.load(tmp_path / "checkpoints" / "vision_mamba_digits" / "final_model.pth", weights_only=True)
    assert state["plateau"] is not None and len(read_log(tmp_path)["epochs"]) == 2


def test_partial_compile_trains_like_eager_and_is_logged(tmp_path, capsys):
    # regional compiles attention and MLP in place (SSM eager); on (auto's choice on CUDA) compiles the
    # whole model, attention's core an opaque op. Either way: same training, same checkpoint keys (no
    # "_orig_mod." prefix), recorded in the log
    eager = tmp_path / "eager"
    assert train_vision_mamba.main(train_args(eager, epochs=1)) == 0
    assert read_log(eager)["compile_mode"] == "off"
    a = final_weights(eager)
    for mode in ("regional", "on"):
        assert train_vision_mamba.main(train_args(tmp_path / mode, "--set", f"training.compile={mode}", epochs=1)) == 0
        log = read_log(tmp_path / mode)
        assert log["compiled"] is True and log["compile_mode"] == mode and log["first_step_s"] > 0
        assert f"(first step {log['first_step_s']:.1f}s: compiling)" in capsys.readouterr().out
        b = final_weights(tmp_path / mode)
        assert a.keys() == b.keys()
        # atol 1e-4: the key bias of attention has an exactly-zero true gradient (softmax ignores it), so
        # AdamW turns rounding noise into lr-sized steps that differ between compiled and eager code
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), (mode, key)


def test_compile_eval_false_evaluates_the_uncompiled_ema_module(tmp_path, monkeypatch):
    calls = []  # (module, mode) of each compile_model call; nothing is really compiled here

    def record(module, mode, cudagraphs=False):
        calls.append((module, mode))
        return module
    monkeypatch.setattr(train_vision_mamba, "compile_model", record)
    for compile_eval in (True, False):
        calls.clear()
        out = tmp_path / str(compile_eval)
        assert train_vision_mamba.main(train_args(out, "--set", "training.compile=regional", "--set", "training.ema=true",
                                                  "--set", f"training.compile_eval={str(compile_eval).lower()}",
                                                  epochs=1)) == 0
        (train_module, train_mode), (eval_module, eval_mode) = calls
        assert train_mode == "regional" and eval_mode == ("regional" if compile_eval else "off")
        assert isinstance(eval_module, VisionMamba) and eval_module is not train_module  # the EMA's copy
        log = read_log(out)
        assert log["compiled"] is True and log["eval_compiled"] is compile_eval


def test_cudagraphs_compile_for_replay_and_mark_every_step(monkeypatch):
    # training.cudagraphs: the training graphs in torch.compile's reduce-overhead mode (CUDA graphs),
    # and every step tells them the previous step's outputs are no longer read
    options = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: options.append(kwargs) or module)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: options.append(kwargs))
    for mode in ("on", "all_but_attention", "regional"):
        for cudagraphs in (True, False):
            options.clear()
            train_vision_mamba.compile_model(create_model("tiny", depth=2, block_type="ssm,attention"), mode, cudagraphs)
            assert options and all(o == ({"mode": "reduce-overhead"} if cudagraphs else {}) for o in options), mode
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(True))
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2)
    t = load_config("digits").training
    criterion, optimizer, scaler, ema = train_vision_mamba.make_step_parts(model, t, t.lr, torch.device("cpu"), None)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for cudagraphs in (True, True, False):
        train_vision_mamba.train_step(model, model, images, labels, criterion, optimizer, scaler, ema, None, 1.0, cudagraphs)
    assert len(marks) == 2


def test_cudagraphs_are_cuda_only_and_logged(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(train_vision_mamba, "compile_model",
                        lambda module, mode, cudagraphs=False: asked.append(cudagraphs) or module)
    assert train_vision_mamba.main(train_args(tmp_path, "--set", "training.compile=regional",
                                              "--set", "training.cudagraphs=true", epochs=1)) == 0
    assert asked == [False, False] and read_log(tmp_path)["cudagraphs"] is False  # no CUDA graphs on a CPU


def test_cudagraphs_only_for_compiled_cuda_training():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert train_vision_mamba.cudagraphs_enabled(True, "all_but_attention", cuda)
    assert not train_vision_mamba.cudagraphs_enabled(False, "all_but_attention", cuda)
    assert not train_vision_mamba.cudagraphs_enabled(True, "off", cuda)  # eager: nothing to replay
    assert not train_vision_mamba.cudagraphs_enabled(True, "on", cpu)
    # the cifar10 preset asks for CUDA graphs; turning compilation off must not turn into an error
    config = apply_overrides(load_config("cifar10"), {"training.compile": "off"})
    assert config.training.cudagraphs and config.training.compile == "off"


def test_cuda_math_times_cudnn_algorithms_unless_deterministic(monkeypatch):
    for module, flag in ((torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32"),
                         (torch.backends.cuda.matmul, "allow_tf32")):
        monkeypatch.setattr(module, flag, getattr(module, flag))  # restored after the test
    train_vision_mamba.configure_cuda_math(cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    train_vision_mamba.configure_cuda_math(cudnn_benchmark=False)  # a deterministic run: the same pick every time
    assert not torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_compile_auto_compiles_the_whole_model_on_cuda_and_nothing_on_cpu():
    resolve = train_vision_mamba.resolve_compile_mode
    assert resolve("auto", torch.device("cuda", 0)) == "on"
    assert resolve("auto", torch.device("cpu")) == "off"
    assert resolve("on", torch.device("cpu")) == "on" and resolve("off", torch.device("cuda")) == "off"


def test_compile_failure_falls_back_to_eager_under_auto_and_is_one_line_otherwise(tmp_path, monkeypatch, capsys):
    import torch._inductor.compile_fx

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no working C compiler")
    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", no_compiler)
    # auto as it resolves on CUDA, so the CPU run meets the same failure a GPU machine without a compiler would
    monkeypatch.setattr(train_vision_mamba, "resolve_compile_mode",
                        lambda mode, device: "on" if mode == "auto" else mode)
    torch._dynamo.reset()  # no graph compiled by an earlier test may be reused
    assert train_vision_mamba.main(train_args(tmp_path / "auto", "--set", "logging.progress_bar=false", epochs=1)) == 0
    assert read_log(tmp_path / "auto")["compile_mode"] == "off"
    out = capsys.readouterr()
    assert "torch.compile does not work here (RuntimeError: no working C compiler); training without it" in out.out
    assert "Traceback" not in out.err
    torch._dynamo.reset()
    code = train_vision_mamba.main(train_args(tmp_path / "named", "--set", "training.compile=on", epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torch.compile failed (RuntimeError: no working C compiler)" in err[0]
    assert "--set training.compile=off" in err[0]


def test_running_out_of_device_memory_is_one_line_that_names_the_batch_size(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(train_vision_mamba, "train_step", out_of_memory)
    code = train_vision_mamba.main(train_args(tmp_path, "--batch_size", "16", "--lr", "0.004", epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert "out of CPU memory at data.batch_size 16 per process" in err[0] and "--batch_size 8 --lr 0.002" in err[0]
    # an odd batch: 7 of 15 images, so 7/15 of the lr (not half of it)
    code = train_vision_mamba.main(train_args(tmp_path / "odd", "--batch_size", "15", "--lr", "0.003", epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--batch_size 7 --lr 0.0014 (lr in proportion)" in err[0]


def test_saved_activation_bytes_count_what_autograd_keeps_per_image_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    # Linear keeps its input (10 floats an image) and its weight (the same at any batch), ReLU its output (20)
    linear_relu = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU())
    assert train_vision_mamba.saved_activation_bytes_per_image(linear_relu, (10,)) == 120
    assert train_vision_mamba.saved_activation_bytes_per_image(linear_relu, (10,), torch.bfloat16) == 60  # as autocast trains
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))
    statistics = [buffer.clone() for buffer in model.buffers()]
    rng = torch.random.get_rng_state()
    assert train_vision_mamba.saved_activation_bytes_per_image(model, (4,)) > 0
    assert all(torch.equal(before, after) for before, after in zip(statistics, model.buffers()))
    assert torch.equal(rng, torch.random.get_rng_state())  # dropout in the probe did not move the training's random stream


def test_a_cpu_step_that_cannot_fit_in_memory_is_refused_with_a_batch_size_that_fits(tmp_path, monkeypatch, capsys):
    config = apply_overrides(load_config("digits"), {"data.batch_size": 256})
    info = DATASET_INFO["digits"]
    model = train_vision_mamba.build_model(config, info)
    per_image, fixed = train_vision_mamba.cpu_step_memory(model, info)
    assert per_image == train_vision_mamba.CPU_STEP_MEMORY_FACTOR * train_vision_mamba.saved_activation_bytes_per_image(model, (1, 8, 8))
    assert fixed == 5 * 4 * sum(p.numel() for p in model.parameters())  # fp32 weights, gradients, 2 AdamW moments, EMA
    monkeypatch.setattr(train_vision_mamba, "available_memory_bytes", lambda: fixed + 100 * per_image)  # 100 images fit
    with pytest.raises(ConfigError, match=r"batch_size 256 needs about .* GiB of memory on this CPU.*--batch_size 64 --lr 0.00125") as refused:
        train_vision_mamba.check_cpu_step_fits(model, config, info, processes_on_host=1)
    assert "processes" not in str(refused.value)
    train_vision_mamba.check_cpu_step_fits(model, apply_overrides(config, {"data.batch_size": 64}), info, 1)  # the advice fits
    with pytest.raises(ConfigError, match=r"\(2 processes\).*--batch_size 32 "):  # torchrun: each process needs its own
        train_vision_mamba.check_cpu_step_fits(model, apply_overrides(config, {"data.batch_size": 64}), info, 2)

    monkeypatch.setattr(train_vision_mamba, "available_memory_bytes", lambda: 1)
    result = run_main(train_vision_mamba.main, train_args(tmp_path / "run", epochs=1), capsys)
    assert_one_line_error(result, "of memory on this CPU", "use a smaller model.model_size, or train on a GPU")
    assert not (tmp_path / "run").exists()  # refused before any folder was made


def test_available_memory_is_read_from_the_os():
    assert 0 < train_vision_mamba.available_memory_bytes() < 2**50


def test_ema_follows_its_warmup_formula_and_copies_integer_buffers():
    from torch.optim.swa_utils import AveragedModel
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = AveragedModel(model, multi_avg_fn=train_vision_mamba.ema_with_warmup(0.5), use_buffers=True)
    # torch's own update_parameters on a twin: update_ema must do what it does, only without its host sync
    twin = AveragedModel(model, multi_avg_fn=train_vision_mamba.ema_with_warmup(0.5), use_buffers=True)
    expected = None
    for n in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))
        train_vision_mamba.update_ema(ema, model)
        twin.update_parameters(model)
        current = [p.detach().clone() for p in model.parameters()]
        if expected is None:  # the first update copies the weights
            expected = current
        else:  # decay (1 + n) / (10 + n) ramps up, then is capped at 0.5 from n = 8 on
            decay = min(0.5, (1 + n) / (10 + n))
            expected = [e * decay + c * (1 - decay) for e, c in zip(expected, current)]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e)
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 20
    assert int(ema.n_averaged) == int(twin.n_averaged) == 20 and ema.n_averaged.device.type == "cpu"
    for ours, torchs in zip(ema.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(ours, torchs, rtol=0, atol=0)


def test_sam_step_applies_the_gradient_taken_uphill_to_the_weights_as_they_were():
    # SAM by hand on a twin: the gradient g at w, the loss's gradient at w + rho g / |g|, and AdamW's
    # step with that one from w; train_step must land on the same weights and report the loss at w
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    for net in (model, twin):  # make_step_parts asks the model for its weight-decay groups
        net.param_groups = lambda weight_decay, exclude=(), net=net: [{"params": list(net.parameters()),
                                                                        "weight_decay": weight_decay}]
    t = load_config("digits").training
    images, labels = torch.randn(16, 6), torch.randint(0, 3, (16,))
    rho = 0.3
    criterion, optimizer, scaler, _ = train_vision_mamba.make_step_parts(model, t, t.lr, torch.device("cpu"), None)
    _, twin_optimizer, _, _ = train_vision_mamba.make_step_parts(twin, t, t.lr, torch.device("cpu"), None)
    for _ in range(3):
        logits, loss = train_vision_mamba.train_step(model, model, images, labels, criterion, optimizer, scaler, None,
                                                     None, 0.0, sam_rho=rho)
        weights = [p.detach().clone() for p in twin.parameters()]
        start_logits = twin(images)
        start_loss = criterion(start_logits, labels)
        grads = torch.autograd.grad(start_loss, list(twin.parameters()))
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        uphill = [(w + rho * g / norm).requires_grad_() for w, g in zip(weights, grads)]
        moved = torch.func.functional_call(twin, dict(zip([n for n, _ in twin.named_parameters()], uphill)), (images,))
        sharp_grads = torch.autograd.grad(criterion(moved, labels), uphill)
        for p, g in zip(twin.parameters(), sharp_grads):
            p.grad = g
        twin_optimizer.step()
        twin_optimizer.zero_grad(set_to_none=True)
        torch.testing.assert_close(loss, start_loss.detach())
        torch.testing.assert_close(logits, start_logits.detach())  # the first pass's, not the moved weights'
        for ours, want in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(ours, want)
    assert all(p.grad is None for p in model.parameters())


def test_muon_takes_the_block_matrices_adamw_the_rest_and_both_follow_the_schedule():
    torch.manual_seed(0)
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2, d_state=4, num_classes=10, img_size=8, in_chans=1,
                         patch_size=2)
    t = apply_overrides(load_config("digits"), {"training.optimizer": "muon", "training.muon_lr_scale": 2.0}).training
    criterion, optimizer, scaler, _ = train_vision_mamba.make_step_parts(model, t, t.lr, torch.device("cpu"), None)
    named = dict(model.named_parameters())
    muon = {id(p) for g in optimizer.parts["muon"].param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.parts["adamw"].param_groups for p in g["params"]}
    assert muon == {id(named[n]) for n in model.hidden_matrices()} and not muon & adamw
    assert muon | adamw == {id(p) for p in model.parameters()}
    assert isinstance(optimizer.parts["muon"], torch.optim.Muon)
    scheduler, _, _ = train_vision_mamba.make_schedulers(optimizer, t, steps_per_epoch=4)
    before = {n: p.detach().clone() for n, p in named.items()}
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        train_vision_mamba.train_step(model, model, images, labels, criterion, optimizer, scaler, None, None, t.grad_clip)
        scheduler.step()
    def part_lrs():
        return {name: {group["lr"] for group in part.param_groups} for name, part in optimizer.parts.items()}
    warming = part_lrs()  # one warm-up lr per part, set through the composite; Muon's at muon_lr_scale times AdamW's
    assert len(warming["adamw"]) == 1 and warming["adamw"] != {t.lr}
    assert sorted(warming["muon"]) == pytest.approx([2.0 * lr for lr in warming["adamw"]])
    assert all(not torch.equal(before[n], named[n]) for n in model.hidden_matrices())
    assert not torch.equal(before["head.weight"], named["head.weight"])
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"} and len(state["muon"]["state"]) == len(muon)
    # a closure runs once and both parts step on the gradient it leaves
    def closure():
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        return loss
    moved = named["head.weight"].detach().clone(), named["blocks.0.mlp.fc1.weight"].detach().clone()
    assert torch.isfinite(optimizer.step(closure))
    assert not torch.equal(moved[0], named["head.weight"]) and not torch.equal(moved[1], named["blocks.0.mlp.fc1.weight"])
    # a loaded optimizer still takes its lr from the scheduler
    optimizer.load_state_dict(copy.deepcopy(state))
    optimizer.param_groups[0]["lr"] = 0.5
    assert optimizer.parts["muon"].param_groups[0]["lr"] == 0.5
    # a schedule replayed for a resumed run (schedule_at_step) keeps Muon's scale, a changed one too
    t.muon_lr_scale = 3.0
    train_vision_mamba.schedule_at_step(optimizer, t, 4, t.lr, step=3)
    replayed = part_lrs()
    assert len(replayed["adamw"]) == 1 and sorted(replayed["adamw"]) == pytest.approx(sorted(warming["adamw"]))
    assert sorted(replayed["muon"]) == pytest.approx([3.0 * lr for lr in replayed["adamw"]])


def test_sam_ascent_moves_rho_along_the_gradient_and_nothing_when_it_overflowed():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    moved = train_vision_mamba.sharpness_ascent(grads, 0.5)
    torch.testing.assert_close(moved[0], torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(moved[1], torch.tensor([[0.4]]))
    overflowed = train_vision_mamba.sharpness_ascent([torch.tensor([float("inf"), 1.0]), torch.tensor([2.0])], 0.5)
    assert all(torch.equal(m, torch.zeros_like(m)) for m in overflowed)


def test_sam_runs_for_the_last_sam_epochs_and_marks_both_passes_for_cuda_graphs(tmp_path, monkeypatch):
    rhos, step = [], train_vision_mamba.train_step
    monkeypatch.setattr(train_vision_mamba, "train_step",
                        lambda *args: rhos.append(args[-1]) or step(*args))
    assert train_vision_mamba.main(train_args(tmp_path, "--set", "training.sam_epochs=2", "--set", "training.sam_rho=0.1",
                                              epochs=3)) == 0
    per_epoch = len(rhos) // 3
    assert rhos == [0.0] * per_epoch + [0.1] * (2 * per_epoch)
    assert read_log(tmp_path)["config"]["training"]["sam_epochs"] == 2
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(True))
    model = create_model("tiny", depth=2, embed_dim=32, num_heads=2)
    t = load_config("digits").training
    criterion, optimizer, scaler, ema = train_vision_mamba.make_step_parts(model, t, t.lr, torch.device("cpu"), None)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    step(model, model, images, labels, criterion, optimizer, scaler, ema, None, 1.0, True, 0.05)
    assert len(marks) == 2


def test_mixing_runs_until_the_last_mix_off_epochs_with_mix_prob(tmp_path, monkeypatch):
    calls, mix = [], train_vision_mamba.mix_batch
    monkeypatch.setattr(train_vision_mamba, "mix_batch",
                        lambda *args: calls.append((args[6], args[8])) or mix(*args))  # (epoch, prob)
    steps = []
    step = train_vision_mamba.train_step
    monkeypatch.setattr(train_vision_mamba, "train_step", lambda *args: steps.append(args[3].dim()) or step(*args))
    assert train_vision_mamba.main(train_args(tmp_path, "--set", "data.mixup_alpha=0.8", "--set", "data.cutmix_alpha=1.0",
                                              "--set", "data.mix_off_epochs=1", "--set", "data.mix_prob=0.5", epochs=2)) == 0
    per_epoch = len(steps) // 2
    assert calls == [(0, 0.5)] * per_epoch
    assert steps == [2] * per_epoch + [1] * per_epoch  # soft (B, K) targets while mixing, then class indices
    assert read_log(tmp_path)["config"]["data"]["mix_prob"] == 0.5


def test_tta_views_are_the_image_moved_by_the_shift_and_mirrored():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    plain, moved_plus, moved_minus, *mirrored = train_vision_mamba.tta_views(images, mirror=True, shift=2)
    assert torch.equal(plain, images)
    assert moved_plus.shape == moved_minus.shape == images.shape
    assert torch.equal(moved_plus[..., 2:, 2:], images[..., :-2, :-2])  # content moved down-right by 2
    assert torch.equal(moved_minus[..., :-2, :-2], images[..., 2:, 2:])  # and up-left by 2
    assert torch.equal(moved_plus[..., 0, 2:], images[..., 2, :-2])  # reflect padding: row -2 is row 2
    assert [v.shape for v in mirrored] == [images.shape] * 3
    assert all(torch.equal(m, v.flip(3)) for m, v in zip(mirrored, (plain, moved_plus, moved_minus)))
    assert len(train_vision_mamba.tta_views(images)) == 1
    assert len(train_vision_mamba.tta_views(images, mirror=True)) == 2
    assert len(train_vision_mamba.tta_views(images, shift=1)) == 3


def test_prediction_pads_a_short_last_batch_so_a_compiled_model_compiles_once():
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=3, img_size=16, depth=2, embed_dim=32, num_heads=2, d_state=4).eval()
    images, labels = torch.randn(21, 3, 16, 16), torch.arange(21) % 3
    loader = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 21, 8)]  # batches of 8, 8 and 5
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward
    torch._dynamo.reset()
    logits, got_labels = train_vision_mamba.predict(torch.compile(model, backend=counting_backend), loader, torch.device("cpu"), tta=True)
    assert len(graphs) == 1  # without the padding the 5-image batch compiles a second graph
    with torch.no_grad():
        expected = (model(images) + model(images.flip(3))) / 2
    assert logits.shape == (21, 3) and torch.equal(got_labels, labels)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    # translated views have the image's shape: still one graph; their logits join the average
    shifted, _ = train_vision_mamba.predict(torch.compile(model, backend=counting_backend), loader, torch.device("cpu"),
                                            tta=True, tta_shift=1)
    assert len(graphs) == 1
    with torch.no_grad():
        views = train_vision_mamba.tta_views(images, mirror=True, shift=1)
        expected = sum(model(view) for view in views) / 6
    torch.testing.assert_close(shifted, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shifted, logits, atol=1e-3)
