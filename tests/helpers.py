"""Shared by the tests: a very small digits run and checks of its outputs."""
import json
import os
import subprocess
import sys

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a 2-layer (the cifar10 preset alternates two block types), 32-wide model: an epoch of digits takes about a second on 2 cores
SMALL = ["--set", "model.depth=2", "--set", "model.embed_dim=32", "--set", "model.num_heads=2", "--set", "model.d_state=4",
         "--quiet"]


def train_args(output_dir, *extra, epochs=2, config="digits"):
    return ["--config", config, "--output_dir", str(output_dir), "--epochs", str(epochs), *SMALL, *extra]


def run_script(script, args, timeout=300, env=None, cwd=ROOT):
    """Run one of the project's scripts in a fresh interpreter; returns CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def run_main(main, args, capsys):
    """Call a script's main() in this interpreter (a fresh one costs seconds of imports) and return what
    run_script would: the exit code, whether returned or raised by argparse, and the captured output."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def read_log(output_dir, name="vision_mamba_digits"):
    with open(os.path.join(output_dir, "logs", name, "training_log.json")) as f:
        return json.load(f)


def assert_png(path):
    with Image.open(path) as img:
        img.load()
        assert img.size[0] > 50 and img.size[1] > 50


def final_weights(output_dir, name="vision_mamba_digits"):
    state = torch.load(os.path.join(output_dir, "checkpoints", name, "final_model.pth"), weights_only=True)
    return state["model"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
