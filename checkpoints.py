"""Checkpoint files: atomic writes, safe reads, and rebuilding a model from one.

A checkpoint is one plain dict of tensors and primitives, readable with
torch.load(weights_only=True); a file that would need arbitrary code to unpickle is refused.
"""
import glob
import os
import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import torch

from config import ConfigError, config_from_dict, model_from_config

FORMAT = "vision-mamba-checkpoint/1"


class CheckpointError(RuntimeError):
    """An unreadable, unsafe or incompatible checkpoint, worded for the user (one line)."""


class OutputWriteError(OSError):
    """A checkpoint, log, figure or report that could not be written (a full disk, a folder made
    read-only); str() is one line for the user."""

    def __str__(self):
        return (f"cannot write {self.filename}: {self.strerror}; free disk space or choose another --output_dir "
                "(files written before are intact)")


def replace_atomically(path, create):
    """create(tmp) makes a complete file at a temporary path beside path, which is then renamed
    over path: a crash at any moment leaves either the old file or the new one, never a torn one."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        create(tmp)
        os.replace(tmp, path)
    except OSError as e:  # named by the file the user asked for, not by its temporary twin
        raise OutputWriteError(e.errno, e.strerror or str(e), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path, write):
    """write(file_object) into a temporary file, fsync it, then replace path with it."""
    def create(tmp):
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    replace_atomically(path, create)


def save_checkpoint(state, path):
    atomic_write(path, lambda f: torch.save(state, f))


def to_host(state):
    """A copy of state whose tensors are on the CPU and share no memory with the originals, so
    training can go on changing its weights while the copy is written. GPU tensors go into pinned
    memory (reused through torch's host allocator cache) without a wait each: one wait at the end."""
    copied_from_gpu = []

    def copy(value):
        if isinstance(value, torch.Tensor):
            if value.is_cuda:
                copied_from_gpu.append(value.device)
                host = torch.empty_like(value, device="cpu", pin_memory=True)
                return host.copy_(value.detach(), non_blocking=True)
            return value.detach().to("cpu", copy=True)
        if isinstance(value, dict):
            return {key: copy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(item) for item in value)
        return value

    host_state = copy(state)
    for device in set(copied_from_gpu):
        torch.cuda.synchronize(device)
    return host_state


class CheckpointWriter:
    """Writes checkpoints on a background thread, so that the training loop does not wait for the
    disk (serialising and fsyncing the cifar10 preset's 77 MB took 0.14-0.22 s on an H200 machine,
    an epoch 1-2 s: docs/BENCHMARKS.md). save() copies the state to host memory at once; the
    writes, links and removals then run one at a time in the order asked. A failed write is raised
    by the next call, or on leaving the with-block, which waits for every pending write: files are
    then complete."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending = []

    def save(self, state, path):
        self.wait()  # one snapshot in host memory at a time; a write is shorter than an epoch
        self.submit(save_checkpoint, to_host(state), path)

    def submit(self, work, *args):
        """work(*args) after everything submitted before it."""
        self._raise_failure()
        self._pending.append(self._pool.submit(work, *args))

    def wait(self):
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _raise_failure(self):
        failed = next((f for f in self._pending if f.done() and f.exception() is not None), None)
        if failed is not None:
            self.wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is None:  # else the error in flight is the one to report
                self.wait()
        finally:
            self._pool.shutdown(wait=True)  # pending writes finish either way: files are complete


def link_checkpoint(source, path):
    """path becomes the file source is now (a hard link; a copy where links are not supported),
    replaced atomically. Saving over source later writes a new file, so path keeps this one."""
    def create(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    replace_atomically(path, create)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint with weights_only=True; every failure is a CheckpointError."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".pth"))
        hint = f" ({', '.join(names[:4])})" if names else ""
        raise CheckpointError(f"checkpoint {path} is a folder; give one of the .pth files in it{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        code_line = next((line for line in lines if "GLOBAL" in line), None)
        if code_line:
            raise CheckpointError(f"checkpoint {path} refused: loading it would run code ({code_line[:160]}); "
                                  "only plain-tensor checkpoints are accepted") from None
        detail = next((line for line in lines[1:] if "documentation" not in line and "file an issue" not in line), "unpickling failed")
        raise CheckpointError(f"checkpoint {path} is corrupt ({detail[:160]}); use another checkpoint") from None
    except Exception as e:  # on bytes that are no torch.save archive, torch's legacy reader can raise almost anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({detail[:160]}); use another checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a Vision Mamba checkpoint of this toolkit (no '{FORMAT}' format tag)")
    return state


def checkpoint_config(state, path="checkpoint"):
    try:
        return config_from_dict(state["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} holds an unusable config: {e}") from None


def evaluation_weights(state):
    """The weights the run evaluated with: the EMA's (kept inside its AveragedModel state under
    'module.') when it used one, else the training weights."""
    if state.get("eval_weights") == "ema" and state.get("ema"):
        return {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    return state["model"]


def model_from_checkpoint(state, path="checkpoint"):
    """Rebuild the model from the config stored in the checkpoint and load the weights it evaluated with."""
    config = checkpoint_config(state, path)
    shape = state.get("model_shape", {})
    try:
        model = model_from_config(config, shape["num_classes"], shape["img_size"], shape["in_chans"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its stored config ({e})") from None
    weights_dict = evaluation_weights(state)
    try:
        model.load_state_dict(weights_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: weights do not fit the architecture in its config ({detail})") from None
    return model, config


def _epoch_number(path):
    match = re.search(r"checkpoint_epoch_(\d+)\.pth$", path)
    return int(match.group(1)) if match else -1


def find_latest_checkpoint(checkpoint_dir, warn=print):
    """The newest checkpoint in checkpoint_dir that loads and has training state, or None.
    Damaged files are skipped with a warning."""
    candidates = glob.glob(os.path.join(checkpoint_dir, "*.pth"))
    best, best_key = None, None
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: skipping {e}")
            continue
        if "optimizer" not in state:
            continue
        key = (state.get("epoch", -1), state.get("step_in_epoch", 0), os.path.getmtime(path))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best
