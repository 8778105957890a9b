"""torchrun with 2 CPU processes (gloo): the distributed code path the GPUs use, minus NCCL."""
import os
import subprocess
import sys

import torch

from helpers import ROOT, final_weights, read_log, train_args

# no augmentation, no stochastic depth, no batch norm: one process with batch 2b must then follow
# the same trajectory as two processes with batch b each (up to float summation order)
DETERMINISTIC = ["--set", "data.crop_padding=0", "--set", "model.drop_path=0.0", "--set", "model.stem=patch"]
# the second of the two epochs with SAM: its move uphill follows the all-reduced gradient, so the
# two processes must still follow the single process's trajectory
SAM_LAST_EPOCH = ["--set", "training.sam_epochs=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_two(out, *args, epochs):
    """train_vision_mamba.py under torchrun with 2 CPU processes; returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train_vision_mamba.py"), *train_args(out, "--batch_size", "32", *args, epochs=epochs)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_two_processes_matches_the_global_batch(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    result = torchrun_two(ddp_out, *DETERMINISTIC, *SAM_LAST_EPOCH, epochs=2)
    assert result.stdout.count("test: loss") == 1  # only rank 0 reports and writes

    log = read_log(ddp_out)
    assert log["environment"]["world_size"] == 2 and log["effective_batch_size"] == 64
    assert len(set(log["rank_weight_digests"])) == 1  # bit-identical replicas at the end
    assert sorted(os.listdir(ddp_out / "checkpoints" / "vision_mamba_digits")) == [
        "best_model.pth", "final_model.pth", "last_checkpoint.pth"]
    assert len(os.listdir(ddp_out / "tensorboard" / "vision_mamba_digits")) >= 1

    single = subprocess.run([sys.executable, os.path.join(ROOT, "train_vision_mamba.py"),
                             *train_args(single_out, "--batch_size", "64", *DETERMINISTIC, *SAM_LAST_EPOCH, epochs=2)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert single.returncode == 0, single.stderr[-2000:]
    assert read_log(single_out)["steps_per_epoch"] == log["steps_per_epoch"]
    a, b = final_weights(ddp_out), final_weights(single_out)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), key


def test_torchrun_with_muon_keeps_the_replicas_identical(tmp_path):
    # Muon orthogonalises the all-reduced gradient's momentum, so both processes must take the same step. Its
    # bf16 Newton-Schulz iterations turn float summation-order differences into visible ones, so a run on one
    # process is no reference to compare the weights with (the AdamW test above is)
    torchrun_two(tmp_path, "--set", "training.optimizer=muon", "--set", "training.muon_lr_scale=2", epochs=1)
    log = read_log(tmp_path)
    assert log["config"]["training"]["optimizer"] == "muon" and log["environment"]["world_size"] == 2
    assert len(set(log["rank_weight_digests"])) == 1
