"""Train a Vision Mamba image classifier.

    python train_vision_mamba.py                      # digits preset: offline, CPU, well under a minute
    python train_vision_mamba.py --config cifar10     # CIFAR-10 preset (status in docs/RESULTS.md)
    python train_vision_mamba.py --config my.json --set training.lr=5e-4 --set data.mixup_alpha=0.8
    python train_vision_mamba.py --config cifar10 --resume auto
    python train_vision_mamba.py --config cifar10 --print_config > my.json   # every value, to edit
    torchrun --nproc_per_node 2 train_vision_mamba.py --config cifar10

Outputs under --output_dir: logs/<exp>/ (training_log.json, training_curves.png,
confusion_matrix.png), checkpoints/<exp>/ (best_model.pth, final_model.pth, last_checkpoint.pth,
checkpoint_epoch_N.pth), tensorboard/<exp>/.
Exit codes: 0 done; 1 training diverged (NaN/Inf loss); 2 bad input; 130/143 stopped by
SIGINT/SIGTERM after saving a resumable checkpoint.
"""
import argparse
import contextlib
import copy
import dataclasses
import glob
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch
import torch._dynamo
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from checkpoints import (FORMAT, CheckpointError, CheckpointWriter, OutputWriteError, checkpoint_config,
                         evaluation_weights, find_latest_checkpoint, link_checkpoint, load_checkpoint, save_checkpoint)
from config import ConfigError, apply_overrides, load_config, model_from_config, parse_value
from data_pipeline import DataError, create_data_loaders, dataset_info, error_line, mix_batch
from reporting import classification_metrics, plot_confusion_matrix, plot_training_curves, write_json
from vision_mamba import backend_env_problem, count_parameters, model_kwargs

TOOLKIT_VERSION = "0.1.0"
USER_ERRORS = (ConfigError, DataError, CheckpointError, OutputWriteError)


class UsageError(ValueError):
    """A bad command line or output location, worded for the user (one line)."""


def check_backend_env():
    problem = backend_env_problem()
    if problem:
        raise UsageError(problem)


class TrainingDiverged(RuntimeError):
    pass


class OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, instead of argparse's usage dump
        raise UsageError(f"{message} (see --help)")


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="preset name or JSON file (default: digits)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", type=int, help="per-process batch size")
    p.add_argument("--model_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--data_dir")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--output_dir", help="root of logs/, checkpoints/ and tensorboard/ (default: .)")
    p.add_argument("--experiment_name")
    p.add_argument("--resume", help="a checkpoint path, or 'auto' for the newest valid one of this experiment")
    p.add_argument("--overwrite", action="store_true", help="replace an existing experiment's outputs")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config value")
    p.add_argument("--print_config", action="store_true",
                   help="print the resolved config as JSON (a file --config accepts) and exit without training")
    return p.parse_args(argv)


def cli_overrides(args):
    """The config values this command line sets explicitly, as {'section.key': value}."""
    named = {"epochs": "training.epochs", "batch_size": "data.batch_size", "model_size": "model.model_size",
             "lr": "training.lr", "data_dir": "data.data_dir", "device": "training.device",
             "output_dir": "logging.output_dir", "experiment_name": "logging.experiment_name", "seed": "training.seed"}
    overrides = {key: getattr(args, name) for name, key in named.items() if getattr(args, name) is not None}
    if args.quiet:
        overrides["logging.progress_bar"] = False
    return {**overrides, **set_overrides(args.set)}


def set_overrides(items):
    """--set section.key=value items as {'section.key': value}; UsageError for a malformed one."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UsageError(f"--set {item!r}: expected section.key=value, e.g. --set training.lr=5e-4")
        overrides[key.strip()] = parse_value(value)
    return overrides


# ------------------------------------------------------------------------------------------
# Run set-up: processes, device, output folders


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def main(self):
        return self.rank == 0


def resolve_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is 'cuda' but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def init_runtime(config):
    """Single process, or one of torchrun's processes (env:// rendezvous; NCCL on CUDA, gloo on CPU)."""
    device = resolve_device(config.training.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world_size, local_rank)


@dataclass
class Paths:
    logs: str
    checkpoints: str
    tensorboard: str

    def all(self):
        return (self.logs, self.checkpoints, self.tensorboard)


def experiment_paths(config):
    root, name = config.logging.output_dir, config.experiment_name
    return Paths(*(os.path.join(root, kind, name) for kind in ("logs", "checkpoints", "tensorboard")))


def check_output_writable(root):
    """Fail before training if root cannot be created or written (nothing is created here)."""
    probe = os.path.abspath(root)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UsageError(f"output folder {root} cannot be created: {probe} is not a folder; choose another --output_dir")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"output folder {root} is not writable ({e.strerror}); choose another --output_dir") from None


def check_existing_experiment(paths, resuming, overwrite):
    existing = [p for p in paths.all() if os.path.isdir(p) and os.listdir(p)]
    if existing and not (resuming or overwrite):
        raise UsageError(f"experiment folder {existing[0]} already exists; use --resume auto to continue it, "
                         "--overwrite to replace it, or --experiment_name for a new one")


# ------------------------------------------------------------------------------------------
# Model, optimisation, schedules


def build_model(config, info):
    return model_from_config(config, info.num_classes, info.img_size, info.in_chans)


# A CPU step that does not fit in memory is killed by the OS without a word (exit 137), so it is refused before
# it starts. What each more image in a batch added to the training script's peak memory, over the activations
# autograd saves for it (torch 2.14, 2 CPU cores, 24 GiB): the cifar10 preset's model 1.45x from batch 64 to 128 and
# 1.70x from 128 to 256 (its ConvFFN and 2d convs make transients autograd does not keep), and at 1024 it was killed
# with 22 GiB free; fashion_mnist's 1.31x (128 to 256); tiny gated hybrid 1.0x and tiny attention 1.4x (64 to 128).
# Larger batches run higher, so the factor is the highest seen, a little over (docs/BENCHMARKS.md, session 32).
CPU_STEP_MEMORY_FACTOR = 1.8


def saved_activation_bytes_per_image(model, image_shape, dtype=None):
    """Bytes of the activations autograd saves for the backward, per training image (under autocast to
    dtype, as training runs): measured on a copy of the model (its batch norms update their statistics)
    at 4 and 2 images, whose difference leaves out the weights that are saved too."""
    probe = copy.deepcopy(model).train()

    def saved_bytes(batch):
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()  # by storage: views of one tensor count once
            return tensor

        with (torch.random.fork_rng(devices=[]), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None),
              torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)):
            probe(torch.zeros(batch, *image_shape))
        return sum(storages.values())

    return (saved_bytes(4) - saved_bytes(2)) / 2


def available_memory_bytes():
    """Memory the OS can still give (Linux's MemAvailable; elsewhere the physical total), or None."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, OSError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def cpu_step_memory(model, info, dtype=None):
    """Estimated memory of a CPU training step on the images of info (a DatasetInfo) as (bytes per image of the
    batch, bytes at any batch size)."""
    per_image = CPU_STEP_MEMORY_FACTOR * saved_activation_bytes_per_image(model, (info.in_chans, info.img_size, info.img_size),
                                                                          dtype)
    fixed = 5 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, gradients, AdamW's 2 moments, EMA
    return per_image, fixed


def check_cpu_step_fits(model, config, info, processes_on_host, dtype=None):
    """ConfigError, with a batch size that fits, when a CPU training step would not fit in memory."""
    available = available_memory_bytes()
    if available is None:
        return
    batch = config.data.batch_size
    per_image, fixed = cpu_step_memory(model, info, dtype)
    needed = processes_on_host * (per_image * batch + fixed)
    if needed <= available:
        return
    largest = int((available / processes_on_host - fixed) / per_image)
    if largest < 1:
        fix = "use a smaller model.model_size, or train on a GPU"
    else:
        smaller = 2 ** int(math.log2(largest))
        fix = f"lower it, e.g. {smaller_batch_hint(batch, config.training.lr, smaller)}, or train on a GPU"
    raise ConfigError(f"a training step at data.batch_size {batch} needs about {needed / 2**30:.3g} GiB of memory on this CPU"
                      f"{f' ({processes_on_host} processes)' if processes_on_host > 1 else ''}, and "
                      f"{available / 2**30:.3g} GiB is available; {fix}")


def smaller_batch_hint(batch, lr, smaller):
    """The flags for a smaller batch, with the lr scaled by the same factor (the linear scaling rule)."""
    return f"--batch_size {smaller} --lr {lr * smaller / batch:g} (lr in proportion)"


def effective_lr(config, world_size):
    """Linear scaling rule (Goyal et al.) when asked: lr grows with the number of processes."""
    return config.training.lr * (world_size if config.training.lr_scaling == "linear" else 1)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW as one optimizer, so the lr schedulers, the loss scaler and the checkpoint treat it
    as they treat AdamW alone. Its param_groups are the two optimizers' own group dicts, so an lr a
    scheduler sets reaches both; the state stays in the two."""

    def __init__(self, muon, adamw):
        self.parts = {"muon": muon, "adamw": adamw}
        super().__init__(self._parts_groups(), defaults={})

    def _parts_groups(self):
        return [group for part in self.parts.values() for group in part.param_groups]

    def step(self, closure=None):
        loss = None
        if closure is not None:  # evaluated once, for both parts
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def state_dict(self):
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict):
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])
        # loading gives each part new group dicts: share those, or a scheduler's lr would miss both
        self.param_groups = self._parts_groups()


def make_optimizer(model, t, lr, device):
    """AdamW over the model's weight-decay groups (fused on CUDA); with training.optimizer muon,
    torch.optim.Muon takes the blocks' weight matrices out of them."""
    matrices = model.hidden_matrices() if t.optimizer == "muon" else frozenset()
    adamw = torch.optim.AdamW(model.param_groups(t.weight_decay, exclude=matrices), lr=lr, betas=t.betas,
                              fused=device.type == "cuda")
    if t.optimizer == "adamw":
        return adamw
    named = dict(model.named_parameters())
    muon = torch.optim.Muon([named[n] for n in sorted(matrices)], lr=lr, weight_decay=t.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    optimizer = MuonWithAdamW(muon, adamw)
    set_peak_lr(optimizer, t, lr)
    return optimizer


def set_peak_lr(optimizer, t, lr):
    """The lr each param group starts its schedule from: lr, and lr * training.muon_lr_scale for Muon's."""
    muon_groups = optimizer.parts["muon"].param_groups if isinstance(optimizer, MuonWithAdamW) else []
    for group in optimizer.param_groups:
        group["lr"] = lr * t.muon_lr_scale if any(group is g for g in muon_groups) else lr
        group.pop("initial_lr", None)  # a scheduler built next takes the lr above as its base


def make_step_parts(model, t, lr, device, dtype):
    """What train_step needs besides the model: the label-smoothed loss, the optimizer, the loss
    scaler (active for fp16 only) and the EMA of the weights if enabled."""
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    optimizer = make_optimizer(model, t, lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(t.ema_decay), use_buffers=True) if t.ema else None
    return criterion, optimizer, scaler, ema


def forward_backward(train_model, images, targets, criterion, scaler, dtype, cudagraphs):
    """Forward under autocast and backward: the weights' .grad holds this batch's (scaled) gradient."""
    if cudagraphs:  # a replay reuses its outputs' memory: tell the graphs the last pass's outputs are done with
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        logits = train_model(images)
    loss = criterion(logits.float(), targets)
    scaler.scale(loss).backward()
    return logits, loss


@torch.no_grad()
def sharpness_ascent(grads, rho):
    """SAM's move of the weights: rho along the gradient's direction, where the loss rises fastest
    (Foret et al. 2021). Scaled fp16 gradients point the same way; an overflowed one moves nothing,
    and the loss scaler then skips the step."""
    norm = torch.nn.utils.get_total_norm(grads)
    scale = torch.where(torch.isfinite(norm), rho / (norm + 1e-12), 0.0)
    # inf * 0 is NaN, and a NaN move would stay in the weights after the move back
    return [g.mul(scale).nan_to_num_(0.0, 0.0, 0.0) for g in grads]


def train_step(train_model, model, images, targets, criterion, optimizer, scaler, ema, dtype, grad_clip,
               cudagraphs=False, sam_rho=0.0):
    """One optimisation step as training runs it (benchmarks/bench_train.py times this same function):
    forward under autocast, backward, clip, optimizer step, EMA update. With sam_rho > 0 a
    Sharpness-Aware Minimization step: the gradient is taken again at the weights moved sam_rho uphill,
    and applied to the weights as they were. Returns the first pass's (logits, loss) on the device;
    nothing here waits for the GPU."""
    logits, loss = forward_backward(train_model, images, targets, criterion, scaler, dtype, cudagraphs)
    if sam_rho > 0:
        logits = logits.detach().clone()  # the second pass's replay would overwrite them
        params = [p for p in model.parameters() if p.grad is not None]
        uphill = sharpness_ascent([p.grad for p in params], sam_rho)
        with torch.no_grad():
            torch._foreach_add_(params, uphill)
        optimizer.zero_grad(set_to_none=True)
        forward_backward(train_model, images, targets, criterion, scaler, dtype, cudagraphs)
        with torch.no_grad():
            torch._foreach_sub_(params, uphill)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        update_ema(ema, model)
    return logits, loss


def make_schedulers(optimizer, t, steps_per_epoch):
    """Per-step schedule (linear warm-up, then cosine / step / constant) and, for 'plateau',
    a ReduceLROnPlateau stepped once per epoch after warm-up."""
    total = t.epochs * steps_per_epoch
    warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    base_lr = optimizer.param_groups[0]["lr"]
    if t.scheduler == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=min(t.min_lr, base_lr))
    elif t.scheduler == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=t.step_epochs * steps_per_epoch, gamma=t.step_gamma)
    else:  # constant, and plateau's per-step part
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    per_step = main
    if warmup > 0:
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
        per_step = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    plateau = None
    if t.scheduler == "plateau":
        mode = "max" if t.monitor == "val_acc" else "min"
        plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=t.plateau_factor,
                                                 patience=t.plateau_patience, min_lr=t.min_lr)
    return per_step, plateau, warmup


# What the per-step lr schedule is a function of (training.* fields), besides the step and the
# number of processes.
SCHEDULE_FIELDS = ("epochs", "warmup_epochs", "scheduler", "lr", "muon_lr_scale", "min_lr", "step_epochs", "step_gamma",
                   "lr_scaling")


def schedule_changes(old, new):
    """The training.* schedule fields whose values differ between two configs."""
    return [f"training.{k}" for k in SCHEDULE_FIELDS if getattr(old.training, k) != getattr(new.training, k)]


def architecture_changes(old, new):
    """(key, old value, new value) for each setting whose change would change the model's parameters:
    the model section as the size table resolves it (drop_path and dropout aside), dataset and image size."""
    def resolved(config):
        model = dataclasses.asdict(config.model)
        for key in ("drop_path", "dropout"):  # regularisation only: a resumed run may change it
            del model[key]
        size = model.pop("model_size")
        return {"data.dataset": config.data.dataset, "data.img_size": dataset_info(config).img_size,
                "model.model_size": size, **{f"model.{k}": v for k, v in model_kwargs(size, **model).items()}}
    before, after = resolved(old), resolved(new)
    return [(key, before[key], after[key]) for key in before if before[key] != after[key]]


def schedule_at_step(optimizer, t, steps_per_epoch, lr, step):
    """A fresh per-step schedule for config t, advanced to `step`: the schedule is a function of
    the step alone, so replaying it gives the lr a run with these settings would have there."""
    set_peak_lr(optimizer, t, lr)
    scheduler, _, _ = make_schedulers(optimizer, t, steps_per_epoch)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            scheduler.step()
    return scheduler


def amp_dtype(config, device):
    mode = config.training.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode != "off" and device.type == "cpu" and mode == "fp16":
        raise ConfigError("training.amp 'fp16' needs a CUDA device; use bf16 or off on CPU")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def ema_with_warmup(decay):
    """AveragedModel's multi_avg_fn: an EMA whose decay ramps up as (1 + n) / (10 + n) to `decay`,
    so early averages follow the weights instead of the random init (a fixed 0.999 needs ~1000
    steps to forget it). `num_averaged` is a host number (see update_ema), so the decay is a Python
    float and the update one foreach kernel; nothing waits for the GPU."""
    @torch.no_grad()
    def update(averaged, current, num_averaged):
        if not torch.is_floating_point(averaged[0]):  # integer buffers (BatchNorm's batch counter)
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1 + int(num_averaged)) / (10 + int(num_averaged)))
        torch._foreach_lerp_(averaged, current, 1 - d)
    return update


@torch.no_grad()
def update_ema(ema, model):
    """What `ema.update_parameters(model)` does for an AveragedModel built with use_buffers=True (as
    make_step_parts builds it), without its host-device synchronisation:
    AveragedModel keeps its update count on the CPU and copies it to the GPU on every call, a
    blocking copy that lets the GPU run dry before the next step is queued. Here the count stays on
    the host and goes to ema.multi_avg_fn as a number; the first call copies the weights, as
    AveragedModel's does."""
    count = int(ema.n_averaged)  # a CPU tensor: reading it does not wait for the GPU
    groups = {}  # (device, dtype) -> (averaged tensors, current tensors), as foreach kernels need
    for averaged, current in zip(itertools.chain(ema.module.parameters(), ema.module.buffers()),
                                 itertools.chain(model.parameters(), model.buffers()), strict=True):
        pair = groups.setdefault((averaged.device, averaged.dtype), ([], []))
        pair[0].append(averaged.detach())
        pair[1].append(current.detach())
    for averaged, current in groups.values():
        if count == 0:
            torch._foreach_copy_(averaged, current)
        else:
            ema.multi_avg_fn(averaged, current, count)
    ema.n_averaged += 1


class EarlyStopping:
    def __init__(self, patience, min_delta, mode):
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best, self.bad_epochs = None, 0

    def improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def update(self, value):
        """Record an epoch's monitored value; True if it is the best so far."""
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self):
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


# ------------------------------------------------------------------------------------------
# Evaluation (shared with evaluate_model.py)


def tta_views(images, mirror=False, shift=0):
    """The views whose logits test-time augmentation averages: the image, with shift > 0 also the
    image moved by +shift and -shift pixels along both axes (reflect-padded, like the training crops;
    airbench's TTA), and with mirror each of those mirrored."""
    views = [images]
    if shift:
        height, width = images.shape[-2:]
        padded = F.pad(images, (shift,) * 4, mode="reflect")  # (B, C, H + 2s, W + 2s)
        # content moved +s, -s; contiguous, or a compiled model would compile again for the strides of a slice
        views += [padded[..., :height, :width].contiguous(), padded[..., 2 * shift:, 2 * shift:].contiguous()]
    return (views + [view.flip(3) for view in views]) if mirror else views


@torch.no_grad()
def predict(model, loader, device, dtype=None, tta=False, tta_shift=0):
    """Logits (float32, CPU) and labels over a loader; tta averages each image with its mirror,
    tta_shift > 0 also with its translations (tta_views).

    A shorter last batch is padded to the first batch's size and the padding's logits dropped:
    a compiled model then sees one batch shape, instead of compiling a second, dynamic-shape graph
    for the last batch of the first validation (every op is per image, so padding changes no logit)."""
    model.eval()
    all_logits, all_labels, full = [], [], None
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        count = images.shape[0]
        full = full or count
        if count < full:
            images = torch.cat([images, images.new_zeros((full - count, *images.shape[1:]))])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            views = tta_views(images, tta, tta_shift)
            logits = sum(model(view).float() for view in views) / len(views)
        all_logits.append(logits[:count].cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def loss_and_accuracy(logits, labels):
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


# ------------------------------------------------------------------------------------------
# Interruption


class StopSignals:
    """First SIGINT/SIGTERM: finish the current step, save, exit 130/143. Second: stop at once."""

    def __init__(self, console):
        self.signum, self.console = None, console
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # checkpoints are written atomically: stopping anywhere is safe
            print("\nstopped at once; the last saved checkpoint is intact", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        self.console(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                     "(signal again to stop at once)")

    def __exit__(self, *exc):
        if self.signum is None:  # after a first signal, a second one still stops at once until exit
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------
# Training


def environment(device, runtime):
    return {"torch": str(torch.__version__), "python": platform.python_version(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cuda": torch.version.cuda, "world_size": runtime.world_size, "toolkit": TOOLKIT_VERSION,
            "hostname": platform.node()}


def rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def prepare_output_folders(paths, runtime, overwrite):
    """Called once the data and model are known to be usable, so a run that fails before
    training writes nothing and an --overwrite that fails loses nothing."""
    if runtime.main:
        for folder in paths.all():
            if overwrite:
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
            for torn in glob.glob(os.path.join(folder, ".*.tmp*")):  # left by a process killed mid-write
                os.remove(torn)
    if runtime.distributed:
        dist.barrier()


def train(config, paths, runtime, resume_state=None, console=print, overwrite=False):
    """Train per config; returns the summary dict written to training_log.json."""
    t, device = config.training, runtime.device
    started = time.time()
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        configure_cuda_math(cudnn_benchmark=not t.deterministic)

    data = create_data_loaders(config, device, runtime.rank, runtime.world_size)
    data_load_s = time.time() - started
    info, dtype = data.info, amp_dtype(config, device)
    model = build_model(config, info).to(device)
    lr = effective_lr(config, runtime.world_size)
    criterion, optimizer, scaler, ema = make_step_parts(model, t, lr, device, dtype)
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size {config.data.batch_size} is larger than the training split; lower it")
    if device.type == "cpu":
        check_cpu_step_fits(model, config, info, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), dtype)
    scheduler, plateau, warmup_steps = make_schedulers(optimizer, t, steps_per_epoch)
    stopper = EarlyStopping(t.early_stopping_patience, t.early_stopping_min_delta, "max" if t.monitor == "val_acc" else "min")
    compile_mode = resolve_compile_mode(t.compile, device)
    if t.compile == "auto" and compile_mode != "off" and (problem := compile_problem(device)):
        console(f"torch.compile does not work here ({problem}); training without it")
        compile_mode = "off"
    compiled = compile_mode != "off"

    history, start_epoch, start_step, global_step, best_epoch = [], 0, 0, 0, None
    partial = None  # running sums of an epoch interrupted mid-way
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        changed = schedule_changes(checkpoint_config(resume_state), config)  # never under plateau: prepare() refuses
        if not changed:
            scheduler.load_state_dict(resume_state["scheduler"])
        else:  # e.g. more epochs: the new schedule, at the step the run has reached
            scheduler = schedule_at_step(optimizer, t, steps_per_epoch, lr, resume_state["global_step"])
            console(f"lr schedule rebuilt for the changed {', '.join(changed)}, continued from step "
                    f"{resume_state['global_step']}: lr {optimizer.param_groups[0]['lr']:.3g}")
        if plateau is not None:
            plateau.load_state_dict(resume_state["plateau"])
        scaler.load_state_dict(resume_state["scaler"])
        if ema is not None:
            ema.load_state_dict(resume_state["ema"])
        stopper.load_state_dict(resume_state["early_stopping"])
        history, best_epoch = list(resume_state["history"]), resume_state.get("best_epoch")
        start_epoch, start_step = resume_state["epoch"], resume_state["step_in_epoch"]
        global_step, partial = resume_state["global_step"], resume_state.get("partial_epoch")
        console(f"resumed from epoch {start_epoch + 1}, step {start_step} of {steps_per_epoch}")

    torch.manual_seed(t.seed + runtime.rank)  # per-rank randomness (drop path) after identical init
    if resume_state is not None:
        set_rng_state(resume_state["rng"], device)

    train_model = model
    if runtime.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    cudagraphs = cudagraphs_enabled(t.cudagraphs, compile_mode, device)
    train_model = compile_model(train_model, compile_mode, cudagraphs)
    eval_module = ema.module if ema is not None else model
    # the evaluation graph (eval mode, no autograd, and for EMA another module) compiles apart from the training one
    eval_model = compile_model(eval_module, compile_mode if t.compile_eval else "off")
    tta = t.tta and info.hflip

    summary = {"config": config.to_dict(), "environment": environment(device, runtime),
               "num_params": count_parameters(model), "steps_per_epoch": steps_per_epoch,
               "batch_size_per_process": config.data.batch_size,
               "effective_batch_size": config.data.batch_size * runtime.world_size,
               "lr_scaling": t.lr_scaling, "effective_lr": lr, "gpu_resident_data": data.resident,
               "compiled": compiled, "compile_mode": compile_mode, "eval_compiled": compiled and t.compile_eval,
               "cudagraphs": cudagraphs,
               "amp": str(dtype).replace("torch.", "") if dtype else "off", "data_load_s": data_load_s, "epochs": history,
               "best_epoch": best_epoch, "best_val": stopper.best, "monitor": t.monitor}  # a resumed run's so far
    prepare_output_folders(paths, runtime, overwrite)
    writer = None
    if runtime.main and config.logging.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(paths.tensorboard)
    if runtime.main:
        console(f"{config.experiment_name}: {summary['num_params'] / 1e6:.2f}M params, {info.num_classes} classes, "
                f"{steps_per_epoch} steps/epoch, batch {config.data.batch_size} x {runtime.world_size} process(es), "
                f"device {device}, amp {summary['amp']}, compile {compile_mode}{' + CUDA graphs' if cudagraphs else ''}, "
                f"data {'resident on ' + str(device) if data.resident else 'DataLoader'} (loaded in {data_load_s:.1f}s)")

    def checkpoint_state(epoch, step_in_epoch, partial_sums=None):
        return {"format": FORMAT, "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "eval_weights": "ema" if ema is not None else "model",
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "plateau": plateau.state_dict() if plateau is not None else None, "scaler": scaler.state_dict(),
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "partial_epoch": partial_sums, "best_epoch": best_epoch, "best_metric": stopper.best,
                "early_stopping": stopper.state_dict(), "rng": rng_state(device), "config": config.to_dict(),
                "class_names": list(data.class_names), "history": history,
                "model_shape": {"num_classes": info.num_classes, "img_size": info.img_size, "in_chans": info.in_chans},
                "versions": {"torch": str(torch.__version__), "toolkit": TOOLKIT_VERSION}}

    # rank 0 writes every checkpoint; within the epoch loop through a background thread
    checkpoint_writer = CheckpointWriter() if runtime.main else None

    def save(name, epoch, step_in_epoch, partial_sums=None):  # the state is built on rank 0 only
        if runtime.main:
            checkpoint_writer.save(checkpoint_state(epoch, step_in_epoch, partial_sums), os.path.join(paths.checkpoints, name))

    def link(source, name):
        if runtime.main:
            checkpoint_writer.submit(link_checkpoint, os.path.join(paths.checkpoints, source),
                                     os.path.join(paths.checkpoints, name))

    show_bar = config.logging.progress_bar and runtime.main
    check_every = 1 if device.type == "cpu" else config.logging.log_interval
    stop_reason, first_step_s = None, None
    with StopSignals(console) as signals, checkpoint_writer or contextlib.nullcontext():
        for epoch in range(start_epoch, t.epochs):
            data.train.set_epoch(epoch)
            train_model.train()
            mixing = (config.data.mixup_alpha > 0 or config.data.cutmix_alpha > 0) and epoch < t.epochs - config.data.mix_off_epochs
            sam_rho = t.sam_rho if epoch >= t.epochs - t.sam_epochs else 0.0
            zero = torch.zeros((), dtype=torch.float64, device=device)
            sums = {k: (partial[k].to(device) if partial else zero.clone()) for k in ("loss", "correct", "seen")}
            bad_step = torch.full((), -1, dtype=torch.int64, device=device)
            epoch_start, partial = time.time(), None
            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                       disable=None if show_bar else True, dynamic_ncols=True)
            step = start_step
            for step, (images, labels) in enumerate(data.train.batches(start_step), start=start_step):
                step_start = time.time() if first_step_s is None else None
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                targets = labels
                if mixing:
                    images, targets = mix_batch(images, labels, info.num_classes, config.data.mixup_alpha,
                                                config.data.cutmix_alpha, t.seed + runtime.rank, epoch, step,
                                                config.data.mix_prob)
                logits, loss = train_step(train_model, model, images, targets, criterion, optimizer, scaler, ema, dtype,
                                          t.grad_clip, cudagraphs, sam_rho)
                if plateau is None or global_step < warmup_steps:
                    scheduler.step()
                global_step += 1
                n = labels.shape[0]
                sums["loss"] += loss.detach() * n
                sums["correct"] += (logits.detach().argmax(1) == labels).sum()
                sums["seen"] += n
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), step, bad_step)
                if step_start is not None:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    first_step_s = time.time() - step_start
                bar.update(1)
                if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                    if int(bad_step) >= 0:
                        raise TrainingDiverged(
                            f"loss became NaN/Inf at epoch {epoch + 1}, step {int(bad_step) + 1} "
                            f"({locate_nonfinite(model, images, device, dtype)}); {divergence_remedies(compiled, dtype)}")
                    if show_bar and (step + 1) % config.logging.log_interval == 0:
                        seen = max(sums["seen"].item(), 1)
                        bar.set_postfix(loss=f"{sums['loss'].item() / seen:.4f}", acc=f"{sums['correct'].item() / seen:.3f}",
                                        lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                        img_s=f"{seen / max(time.time() - epoch_start, 1e-9):.0f}")
                if _stop_requested(signals, runtime, step, config.logging.log_interval):
                    stop_reason = signals.signum or signal.SIGTERM
                    save("last_checkpoint.pth", epoch, step + 1, {k: v.cpu() for k, v in sums.items()})
                    break
            bar.close()
            if stop_reason is not None:
                break
            train_time = time.time() - epoch_start
            if runtime.distributed:
                for value in sums.values():
                    dist.all_reduce(value)
            seen = sums["seen"].item()
            row = {"epoch": epoch + 1, "train_loss": sums["loss"].item() / seen, "train_acc": sums["correct"].item() / seen}

            val_metrics = [None]
            if runtime.main:
                logits, labels = predict(eval_model, data.val, device, dtype, tta=False)
                val_metrics = [loss_and_accuracy(logits, labels)]
            if runtime.distributed:
                dist.broadcast_object_list(val_metrics, src=0)
            row["val_loss"], row["val_acc"] = val_metrics[0]
            row.update({"lr": optimizer.param_groups[0]["lr"], "epoch_time": time.time() - epoch_start,
                        "train_time": train_time, "img_per_s": seen / max(train_time, 1e-9)})
            history.append(row)
            monitored = row[t.monitor]
            if plateau is not None and global_step >= warmup_steps:
                plateau.step(monitored)
            weights_finite = all(torch.isfinite(p).all() for p in eval_module.parameters())
            is_best = stopper.update(monitored) and weights_finite
            if is_best:
                best_epoch = epoch + 1
            start_step = 0
            # one serialisation an epoch (~100 MB for tiny): best and periodic checkpoints link to it
            save("last_checkpoint.pth", epoch + 1, 0)
            if is_best:
                link("last_checkpoint.pth", "best_model.pth")
            if config.logging.save_every and (epoch + 1) % config.logging.save_every == 0:
                link("last_checkpoint.pth", f"checkpoint_epoch_{epoch + 1}.pth")
                if runtime.main:
                    checkpoint_writer.submit(_prune_epoch_checkpoints, paths.checkpoints, config.logging.keep_last)
            if runtime.main:
                summary.update(best_epoch=best_epoch, best_val=stopper.best, first_step_s=first_step_s,
                               elapsed_s=time.time() - started)
                write_json(os.path.join(paths.logs, "training_log.json"), summary)
                if writer is not None:
                    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s", "epoch_time"):
                        writer.add_scalar(_tb_tag(key), row[key], epoch + 1)
                    writer.flush()
                console(f"epoch {epoch + 1:3d}/{t.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  "
                        f"{row['img_per_s']:.0f} img/s  {row['epoch_time']:.1f}s" + ("  *best" if is_best else "")
                        + (f"  (first step {first_step_s:.1f}s: compiling)" if compiled and len(history) == 1 else ""))
            if stopper.should_stop:
                summary["stopped_early"] = {"epoch": epoch + 1, "patience": t.early_stopping_patience}
                if runtime.main:
                    console(f"early stopping: no {t.monitor} improvement for {t.early_stopping_patience} epochs")
                break

    if stop_reason is not None:
        if writer is not None:
            writer.close()
        return {"interrupted": int(stop_reason)}

    if runtime.distributed:  # DDP keeps replicas in step; record the proof
        digests = [None] * runtime.world_size
        dist.all_gather_object(digests, weights_digest(model))
        summary["rank_weight_digests"] = digests
    if runtime.main:  # every earlier write has finished: the with-block waited for them
        save_checkpoint(checkpoint_state(len(history), 0), os.path.join(paths.checkpoints, "final_model.pth"))
        _finish(config, paths, summary, history, data.class_names, data, eval_model, eval_module, device, dtype, tta,
                writer, started, console)
    if runtime.distributed:
        dist.barrier()
    return summary


def configure_cuda_math(cudnn_benchmark=True):
    """TF32 for fp32 matmuls and convolutions. cudnn_benchmark: cuDNN times its algorithms for each
    convolution shape on first use and keeps the fastest (a training run has one batch shape, so it
    searches once); off, it picks by heuristics, the same pick on every run (deterministic runs)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = cudnn_benchmark


def resolve_compile_mode(mode, device):
    """training.compile=auto: on CUDA the whole model is compiled, attention's core included as an
    opaque op (vision_mamba.attention_core): with inductor seeing into attention, whole-model bf16
    training went wrong in 7 of 12 runs (5 NaN in sessions 1-2, a collapse without NaN in each of
    sessions 17 and 18); behind the op it trained stably in 5 of 5, 10% faster than with attention
    run eagerly (docs/RESULTS.md, session 18). On the CPU compiling costs more than it gives."""
    if mode != "auto":
        return mode
    return "on" if device.type == "cuda" else "off"


def cudagraphs_enabled(requested, compile_mode, device):
    """training.cudagraphs takes effect only on compiled graphs running on CUDA. Under DDP the
    graphs are the pieces DDP's bucketing cuts the compiled model into; the gradient all-reduce
    runs eagerly between their backward replays."""
    return requested and compile_mode != "off" and device.type == "cuda"


def compile_problem(device):
    """None if torch.compile can build a kernel on device; else the first line of what stopped it
    (commonly no C compiler, or no Triton)."""
    try:
        with torch._dynamo.config.patch(suppress_errors=False):
            torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
    except Exception as e:
        return compile_failure_reason(e)
    return None


def compile_failure_reason(error):
    cause = getattr(error, "inner_exception", None) or error.__cause__ or error  # dynamo wraps the backend's error
    return f"{type(cause).__name__}: " + (str(cause).strip().splitlines() or [""])[0][:200]


def compile_model(module, mode, cudagraphs=False):
    """What to call to run `module` (a VisionMamba, or one inside DDP) under training.compile=mode,
    its compiled graphs replayed as CUDA graphs if cudagraphs (no effect on a CPU).

    on: the whole model through torch.compile, attention's core an opaque op in the graph.
    regional: attention and MLP of every block compiled in place (one graph reused by all blocks),
    SSM layers eager. all_but_attention: the whole model compiled with the attention layers run
    eagerly (a graph break each), the default of sessions 4-17 (docs/RESULTS.md).
    """
    if mode == "off":
        return module
    options = {"mode": "reduce-overhead"} if cudagraphs else {}
    model = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    for block in model.blocks:
        if mode == "regional":
            for part in (block.attn, block.mlp):
                if part is not None:
                    part.compile(**options)
        elif mode == "all_but_attention" and block.attn is not None and "forward" not in vars(block.attn):
            block.attn.forward = torch.compiler.disable(block.attn.forward)
    return module if mode == "regional" else torch.compile(module, **options)


def divergence_remedies(compiled, amp_dtype):
    remedies = ["lower --lr", "raise training.warmup_epochs", "keep training.grad_clip > 0",
                "use --set training.amp=bf16 instead of fp16", "or resume from an earlier checkpoint"]
    if compiled and amp_dtype is not None:  # the cause of every divergence we measured (docs/RESULTS.md)
        remedies.insert(0, "--set training.compile=all_but_attention or off (compiled mixed-precision training "
                           "diverged in our tests; with attention run eagerly it never did)")
    return "usual remedies: " + ", ".join(remedies)


@torch.no_grad()
def locate_nonfinite(model, images, device, dtype):
    """Where a diverged run shows its first non-finite numbers: a weight, or else the innermost
    module whose output on this batch is not finite."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"non-finite weights in {bad[0]}" + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
    first = []

    def check(name):
        def hook(module, args, output):
            if not first and torch.is_tensor(output) and not torch.isfinite(output).all():
                first.append(name)
        return hook

    handles = [module.register_forward_hook(check(name)) for name, module in model.named_modules() if name]
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return f"first non-finite output: {first[0]}" if first else "weights and activations on this batch are finite"


def weights_digest(model):
    """sha256 of every parameter's bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _stop_requested(signals, runtime, step, interval):
    """Every rank must stop at the same step: in a distributed run the flag is agreed every `interval` steps."""
    if not runtime.distributed:
        return signals.signum is not None
    if (step + 1) % interval:
        return False
    flag = torch.tensor([1 if signals.signum is not None else 0], device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _finish(config, paths, summary, history, class_names, data, eval_model, eval_module, device, dtype, tta,
            writer, started, console):
    """Test the best model once, then write the figures, the final log and the hyperparameters."""
    test_started = time.time()
    best_path = os.path.join(paths.checkpoints, "best_model.pth")
    if os.path.exists(best_path):
        best = load_checkpoint(best_path)
        eval_module.load_state_dict(evaluation_weights(best))
    tta_shift = config.training.tta_shift
    logits, labels = predict(eval_model, data.test, device, dtype, tta=tta, tta_shift=tta_shift)
    test_loss, test_acc = loss_and_accuracy(logits, labels)
    metrics, cm, _ = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), class_names)
    summary.update(test_loss=test_loss, test_acc=test_acc, test_tta=tta, test_tta_shift=tta_shift,
                   test_macro_f1=metrics["macro"]["f1"], test_s=time.time() - test_started,
                   total_time_s=time.time() - started, finished=True)
    write_json(os.path.join(paths.logs, "training_log.json"), summary)
    plot_training_curves(history, os.path.join(paths.logs, "training_curves.png"))
    plot_confusion_matrix(cm, class_names, os.path.join(paths.logs, "confusion_matrix.png"),
                          title=f"{config.experiment_name} (test)")
    if writer is not None:
        writer.add_scalar("test/loss", test_loss, len(history))
        writer.add_scalar("test/acc", test_acc, len(history))
        hparams = {f"{section}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for section, values in config.to_dict().items() for k, v in values.items()}
        writer.add_hparams(hparams, {"hparam/test_acc": test_acc, "hparam/best_val": summary.get("best_val") or 0.0},
                           run_name=".")
        writer.close()
    console(f"test: loss {test_loss:.4f}  accuracy {test_acc:.4f}  (best epoch {summary.get('best_epoch')}, "
            f"{summary['total_time_s']:.1f}s total)  logs in {paths.logs}")


def _tb_tag(key):
    return {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
            "lr": "lr", "img_per_s": "throughput/img_per_s", "epoch_time": "time/epoch_s"}[key]


def _prune_epoch_checkpoints(directory, keep):
    files = sorted(glob.glob(os.path.join(directory, "checkpoint_epoch_*.pth")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    for old in files[:-keep]:
        os.remove(old)


# ------------------------------------------------------------------------------------------
# Command line


def prepare(argv):
    """Parse and check everything that can be checked before any file is written."""
    args = parse_args(argv)
    check_backend_env()
    overrides = cli_overrides(args)
    config = load_config(args.config or "digits")
    config = apply_overrides(config, overrides)
    resume_state = None
    paths = experiment_paths(config)
    if args.resume:
        resume_path = args.resume
        if args.resume == "auto":
            resume_path = find_latest_checkpoint(paths.checkpoints, warn=lambda m: print(m, file=sys.stderr)) \
                if os.path.isdir(paths.checkpoints) else None
        if resume_path is not None:
            resume_state = load_checkpoint(resume_path)
            if "optimizer" not in resume_state:
                raise CheckpointError(f"{resume_path} has no training state to resume from")
            # a resumed run keeps its stored config; only what this command line sets explicitly changes
            base = checkpoint_config(resume_state, resume_path)
            # --config names the experiment; its dataset must be the checkpoint's, the rest of it is not applied
            # (the checkpoint's config holds the run's own --set values, which the preset does not know)
            named_dataset = config.data.dataset if args.config else base.data.dataset
            config = apply_overrides(base, overrides)
            if config.data.batch_size != base.data.batch_size:  # the stored position in the epoch counts batches
                raise ConfigError(f"data.batch_size {config.data.batch_size} differs from the checkpoint's "
                                  f"{base.data.batch_size}: a resumed run keeps its batch size; start a new run for another")
            if config.training.optimizer != base.training.optimizer:  # the stored state is the other optimizer's
                raise ConfigError(f"training.optimizer {config.training.optimizer!r} differs from the checkpoint's "
                                  f"{base.training.optimizer!r}: resume with the checkpoint's optimizer, or start a new run")
            refused = architecture_changes(base, config)
            if named_dataset != base.data.dataset:
                refused.insert(0, ("data.dataset", base.data.dataset, named_dataset))
            if refused:
                key, old, new = refused[0]
                raise ConfigError(f"{key} {new!r} differs from the checkpoint's {old!r}: a resumed run keeps its model and "
                                  "dataset; resume with the checkpoint's settings, or start a new run (--experiment_name)")
            changed = schedule_changes(base, config)
            if changed and config.training.scheduler == "plateau":
                raise ConfigError(f"{', '.join(changed)} changed since the checkpoint, and a plateau schedule's reductions "
                                  "cannot be replayed; resume with the checkpoint's values, or start a new run")
            paths = experiment_paths(config)
        else:
            print(f"no checkpoint to resume in {paths.checkpoints}; starting from scratch", file=sys.stderr)
    if not args.print_config:  # a command that writes no file needs neither check
        check_output_writable(config.logging.output_dir)
        check_existing_experiment(paths, resuming=args.resume is not None, overwrite=args.overwrite)
    return args, config, paths, resume_state


def main(argv=None):
    try:
        args, config, paths, resume_state = prepare(argv)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        runtime = init_runtime(config)
    except (UsageError,) + USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    console = print if runtime.main else (lambda *a, **k: None)
    # compile=auto trains eagerly where compiling fails (train() says so when a test kernel cannot be
    # built; later failures fall back with torch's warning); a mode asked for by name fails with one line
    automatic = torch._dynamo.config.patch(suppress_errors=config.training.compile == "auto")
    try:
        with automatic:
            result = train(config, paths, runtime, resume_state, console, overwrite=args.overwrite and resume_state is None)
    except USER_ERRORS as e:  # also a DataLoader worker's: torch re-raises it as the same type
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    except torch._dynamo.exc.BackendCompilerFailed as e:
        print(f"error: torch.compile failed ({compile_failure_reason(e)}); train without it: --set training.compile=off "
              f"(or auto, which falls back to eager by itself)", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        batch, lr = config.data.batch_size, config.training.lr
        print(f"error: out of {runtime.device.type.upper()} memory at data.batch_size {batch} per process; lower it, "
              f"e.g. {smaller_batch_hint(batch, lr, max(batch // 2, 1))}, or use a smaller model_size; "
              f"checkpoints already saved are intact", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped at once; the last saved checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if "interrupted" in result:
        signum = result["interrupted"]
        if runtime.main:
            cmd = " ".join(["python", os.path.basename(sys.argv[0])] + [a for a in (argv if argv is not None else sys.argv[1:])
                                                                          if a != "--overwrite"])
            if "--resume" not in cmd:
                cmd += " --resume auto"
            print(f"saved {os.path.join(paths.checkpoints, 'last_checkpoint.pth')}; resume with: {cmd}", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
