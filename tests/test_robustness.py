"""Interruption, corruption and unsafe input."""
import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
import evaluate_model
import train_vision_mamba
from checkpoints import (CheckpointError, CheckpointWriter, OutputWriteError, find_latest_checkpoint, link_checkpoint,
                         load_checkpoint, save_checkpoint)
from helpers import ROOT, SMALL, assert_one_line_error, final_weights, read_log, run_main, run_script, train_args

EPOCHS = 4


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    assert train_vision_mamba.main(train_args(out, epochs=EPOCHS)) == 0
    return out


def start_training(out, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_vision_mamba.py"), *train_args(out, *extra, epochs=EPOCHS)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_training(out, proc, timeout=60):
    """Until the first epoch's log exists (the run is inside its training loop)."""
    log = out / "logs" / "vision_mamba_digits" / "training_log.json"
    deadline = time.time() + timeout
    while not log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def assert_same_result(out, baseline):
    a, b = final_weights(baseline), final_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_log(baseline), read_log(out)
    assert log_a["test_acc"] == log_b["test_acc"] and log_a["test_loss"] == log_b["test_loss"]
    assert [r["val_acc"] for r in log_a["epochs"]] == [r["val_acc"] for r in log_b["epochs"]]


@pytest.mark.parametrize("sig,extra_delay", [(signal.SIGTERM, 0.0), (signal.SIGTERM, None), (signal.SIGKILL, 0.3), (signal.SIGKILL, None)])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, baseline, sig, extra_delay, capsys):
    delay = extra_delay if extra_delay is not None else random.Random(int(sig) * 7).uniform(0.2, 2.0)
    proc = start_training(tmp_path)
    wait_until_training(tmp_path, proc)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if extra_delay is not None:  # signalled right after the first epoch: the run cannot have finished
        assert proc.returncode == (143 if sig == signal.SIGTERM else -int(sig)), (proc.returncode, err[-1500:])
    if sig == signal.SIGTERM and proc.returncode == 143:
        assert "resume with:" in err and "--resume auto" in err
        state = torch.load(tmp_path / "checkpoints" / "vision_mamba_digits" / "last_checkpoint.pth", weights_only=True)
        assert state["step_in_epoch"] > 0 or state["epoch"] > 0
    else:
        assert proc.returncode in (0, -int(sig)), (proc.returncode, err[-1500:])
    # resumed in this interpreter, where the baseline ran: the killed process must not matter
    resumed = run_main(train_vision_mamba.main, train_args(tmp_path, "--resume", "auto", epochs=EPOCHS), capsys)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not [n for n in os.listdir(tmp_path / "checkpoints" / "vision_mamba_digits") if n.startswith(".")]
    assert_same_result(tmp_path, baseline)


def test_second_sigint_stops_at_once(tmp_path):
    proc = start_training(tmp_path)
    wait_until_training(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0), err[-1500:]
    assert "Traceback" not in err
    folder = tmp_path / "checkpoints" / "vision_mamba_digits"
    for name in os.listdir(folder):
        if name.endswith(".pth"):
            load_checkpoint(str(folder / name))  # every checkpoint left is whole
        else:
            assert name.startswith(".") and ".tmp" in name  # at most a torn temporary file, never a torn checkpoint


def test_atomic_write_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"format": checkpoints.FORMAT, "model": {"w": torch.ones(3)}}, str(path))

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint({"format": checkpoints.FORMAT, "model": {"w": torch.zeros(3)}}, str(path))
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind


def weights_state(weights):
    return {"format": checkpoints.FORMAT, "model": {"w": weights}}


def test_background_writer_writes_each_state_as_it_was_when_saved_in_order(tmp_path):
    weights, last = torch.zeros(1000), str(tmp_path / "last.pth")
    with CheckpointWriter() as writer:
        for step in range(3):
            weights += 1
            writer.save(weights_state(weights), last)
            writer.submit(link_checkpoint, last, str(tmp_path / f"step{step}.pth"))  # runs after the save
            weights += 100  # training goes on while the copy is written
    for step in range(3):
        saved = load_checkpoint(str(tmp_path / f"step{step}.pth"))["model"]["w"]
        assert torch.equal(saved, torch.full((1000,), 1.0 + 101 * step))
    assert sorted(os.listdir(tmp_path)) == ["last.pth", "step0.pth", "step1.pth", "step2.pth"]


def test_background_writer_raises_a_failed_write_and_finishes_the_others(tmp_path):
    unwritable = str(tmp_path / "no_such_folder" / "last.pth")
    with pytest.raises(OutputWriteError, match="cannot write .*no_such_folder/last.pth"):
        with CheckpointWriter() as writer:
            writer.save(weights_state(torch.ones(3)), unwritable)
            writer.save(weights_state(torch.ones(3)), str(tmp_path / "never.pth"))  # waits for the first: raises
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyError):  # an error in the loop is the one reported, after pending writes finish
        with CheckpointWriter() as writer:
            writer.save(weights_state(torch.ones(3)), str(tmp_path / "done.pth"))
            raise KeyError("in the training loop")
    assert torch.equal(load_checkpoint(str(tmp_path / "done.pth"))["model"]["w"], torch.ones(3))


def test_a_disk_filling_up_mid_run_is_one_line_and_keeps_the_saved_checkpoints(tmp_path, monkeypatch, capsys):
    real_save, saves = torch.save, []

    def filling_save(obj, f):  # the third checkpoint finds the disk full, half-way through
        saves.append(obj)
        if len(saves) == 3:
            f.write(b"PK\x03\x04 a third of a zip file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", filling_save)
    result = run_main(train_vision_mamba.main, train_args(tmp_path, epochs=EPOCHS), capsys)
    assert_one_line_error(result, "cannot write", "last_checkpoint.pth", "No space left on device", "--output_dir")
    folder = tmp_path / "checkpoints" / "vision_mamba_digits"
    assert load_checkpoint(str(folder / "last_checkpoint.pth"))["epoch"] == 2  # the last whole save stands
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary file left behind


@pytest.fixture(scope="module")
def good_checkpoint(baseline):
    return baseline / "checkpoints" / "vision_mamba_digits" / "best_model.pth"


def corrupt_variants(good, tmp_path):
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.pth"
    noise.write_bytes(random.Random(0).randbytes(4096))
    # other noise sends torch's legacy reader into IndexError or KeyError (torch 2.14: seeds 2, 20)
    noise_legacy = {seed: tmp_path / f"noise{seed}.pth" for seed in (2, 20)}
    for seed, path in noise_legacy.items():
        path.write_bytes(random.Random(seed).randbytes(4096))
    state = torch.load(good, weights_only=True)
    state["config"]["model"]["embed_dim"] = 48
    wrong_arch = tmp_path / "wrong_arch.pth"
    torch.save(state, wrong_arch)
    state = torch.load(good, weights_only=True)
    state["model_shape"]["num_classes"] = 5
    wrong_classes = tmp_path / "wrong_classes.pth"
    torch.save(state, wrong_classes)
    not_ours = tmp_path / "not_ours.pth"
    torch.save({"weights": torch.ones(2)}, not_ours)
    return [("truncated or corrupt", truncated), ("is corrupt", noise), ("do not fit the architecture", wrong_arch),
            ("size mismatch for head", wrong_classes), ("not a Vision Mamba checkpoint", not_ours),
            ("does not exist", tmp_path / "missing.pth"),
            ("is a folder; give one of the .pth files in it (best_model.pth", good.parent)] + \
        [("corrupt", path) for path in noise_legacy.values()]


def test_corrupt_checkpoints_get_one_clear_line_in_evaluation(good_checkpoint, tmp_path, capsys):
    for fragment, path in corrupt_variants(good_checkpoint, tmp_path):
        assert evaluate_model.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "ev")]) == 2, fragment
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0] and str(path) in err[0], (fragment, err)
    assert not (tmp_path / "ev").exists()


def test_corrupt_checkpoint_refused_by_resume(good_checkpoint, tmp_path, capsys):
    truncated = dict(corrupt_variants(good_checkpoint, tmp_path))["truncated or corrupt"]
    assert train_vision_mamba.main(train_args(tmp_path / "out", "--resume", str(truncated))) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hand-made pickle is protocol 4; torch says so
def test_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"format": checkpoints.FORMAT, "model": _CreatesAFile(str(marker))}, f)
    evil_zip = tmp_path / "evil_zip.pth"
    torch.save({"format": checkpoints.FORMAT, "model": _CreatesAFile(str(marker))}, evil_zip)
    for path in (evil, evil_zip):
        with pytest.raises(CheckpointError):
            load_checkpoint(str(path))
        assert evaluate_model.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "ev")]) == 2
        assert train_vision_mamba.main(train_args(tmp_path / "out", "--resume", str(path))) == 2
    err = capsys.readouterr().err
    assert "would run code" in err
    assert not marker.exists()


def test_resume_auto_skips_damaged_checkpoints_with_a_warning(baseline, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    good = baseline / "checkpoints" / "vision_mamba_digits" / "final_model.pth"
    (folder / "checkpoint_epoch_2.pth").write_bytes(good.read_bytes())
    (folder / "last_checkpoint.pth").write_bytes(good.read_bytes()[:1000])  # newest, but torn
    warnings = []
    assert find_latest_checkpoint(str(folder), warn=warnings.append) == str(folder / "checkpoint_epoch_2.pth")
    assert len(warnings) == 1 and "last_checkpoint.pth" in warnings[0]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_to_the_whole_process_group_still_saves_with_dataloader_workers(tmp_path, sig, code):
    # Ctrl-C in a terminal and `timeout` signal the whole process group; a DataLoader worker killed by the signal
    # made the main process raise "DataLoader worker ... is killed by signal" instead of saving and exiting
    args = image_folder_run_with_workers(tmp_path, epochs=200)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_vision_mamba.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "out" / "logs" / "vision_mamba_imagefolder" / "training_log.json"
    deadline = time.time() + 120
    while not log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the next epoch, its workers running
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "resume with:" in err
    state = load_checkpoint(str(tmp_path / "out" / "checkpoints" / "vision_mamba_imagefolder" / "last_checkpoint.pth"))
    assert state["epoch"] >= 1 or state["step_in_epoch"] > 0


def test_a_run_that_stops_with_dataloader_workers_running_exits(tmp_path):
    # a corrupt image stops the run mid-epoch with a worker still holding batches; at exit torch terminates the
    # workers: a worker that ignored SIGTERM (this project's first fix for the test above) made the process hang there
    args = image_folder_run_with_workers(tmp_path, epochs=2)
    (tmp_path / "tree" / "train" / "dog" / "30.png").write_bytes(b"not a png")
    result = run_script("train_vision_mamba.py", args, timeout=120)
    assert result.returncode == 2 and "30.png" in result.stderr


def image_folder_run_with_workers(tmp_path, epochs):
    """Arguments of a small run on a 3-class ImageFolder tree written under tmp_path, through the DataLoader
    path with 2 worker processes."""
    from test_data import write_image_folder
    write_image_folder(str(tmp_path / "tree"), ("train", "test"), per_class=40)
    return ["--config", "imagefolder", "--data_dir", str(tmp_path / "tree"), "--output_dir", str(tmp_path / "out"),
            "--epochs", str(epochs), "--batch_size", "4", *SMALL, "--set", "data.img_size=16",
            "--set", "data.gpu_resident=off", "--set", "data.num_workers=2"]
