"""Datasets, splits, augmentation and loaders: `create_data_loaders(config)`.

Two loader paths give the same augmentation semantics:
- `ResidentLoader`: the whole split lives on the device as uint8 (NCHW); batches are drawn by
  index from a per-epoch permutation, and crop/flip/erasing run per batch on the device. Used
  for every built-in dataset on CUDA (data.gpu_resident=auto) and always for digits.
- a torch DataLoader over torchvision datasets with transforms v2 (ImageFolder trees, and
  built-in datasets on CPU or with data.gpu_resident=off).
MixUp/CutMix run in the training loop on either path (`mix_batch`).

Every random draw of an epoch derives from (seed, epoch, batch index), so a run resumed in the
middle of an epoch sees the same batches and augmentations as one that never stopped.
"""
import contextlib
import copy
import functools
import glob
import gzip
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.transforms import v2

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DECODE_POOL_MIN_IMAGES = 2048  # smaller ImageFolder splits are decoded in-process


class DataError(RuntimeError):
    """Missing, unreadable or inconsistent data, worded for the user (one line)."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple
    std: tuple
    hflip: bool  # does a mirror image keep its label?
    files_hint: str  # what to put where when a download is impossible


CIFAR_HINT = ("put the python version of the archive ({name}, from https://www.cs.toronto.edu/~kriz/) unpacked as "
              "{root}/{folder}/ (data_batch_*/test_batch or train/test files) or the .tar.gz itself in {root}/")
MNIST_HINT = ("put the four idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
              "t10k-labels-idx1-ubyte.gz) in {root}/{folder}/raw/")
DATASET_INFO = {
    "digits": DatasetInfo(10, 1, 8, (0.30,), (0.37,), False, "digits ships with scikit-learn; reinstall scikit-learn"),
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                           CIFAR_HINT.replace("{name}", "cifar-10-python.tar.gz").replace("{folder}", "cifar-10-batches-py")),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                            CIFAR_HINT.replace("{name}", "cifar-100-python.tar.gz").replace("{folder}", "cifar-100-python")),
    "fashion_mnist": DatasetInfo(10, 1, 28, (0.2860,), (0.3530,), True,
                                 MNIST_HINT.replace("{folder}", "FashionMNIST") + ", or on Debian/Ubuntu: apt-get install dataset-fashion-mnist"),
    "mnist": DatasetInfo(10, 1, 28, (0.1307,), (0.3081,), False, MNIST_HINT.replace("{folder}", "MNIST")),
    "svhn": DatasetInfo(10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False,
                        "put train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/) in {root}/"),
    "imagefolder": DatasetInfo(0, 3, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True,
                               "arrange images as {root}/train/<class>/*.png and {root}/val/<class>/ (or test/), or as "
                               "{root}/<class>/*.png (data.test_fraction of them is then held out for testing)"),
}


def dataset_info(config):
    info = DATASET_INFO[config.data.dataset]
    if config.data.img_size is not None:
        info = DatasetInfo(**{**info.__dict__, "img_size": config.data.img_size})
    return info


# ------------------------------------------------------------------------------------------
# Raw data as uint8 arrays: images (N, C, H, W), labels (N,), class names


@dataclass
class ArraySplit:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)


def _dataset_files_present(cls, root):
    """Where torchvision looks for cls's files under root, if anything is there (else None)."""
    if hasattr(cls, "base_folder"):  # CIFAR10, CIFAR100
        place = os.path.join(root, cls.base_folder)
    elif issubclass(cls, datasets.MNIST):  # MNIST, FashionMNIST: <root>/<class name>/raw
        place = os.path.join(root, cls.__name__, "raw")
    else:  # SVHN: the .mat files in root itself
        return root if glob.glob(os.path.join(root, "*_32x32.mat")) else None
    return place if os.path.isdir(place) and os.listdir(place) else None


def _torchvision_dataset(cls, root, train, download, info, **kwargs):
    split_kwargs = kwargs or {"train": train}
    try:
        return cls(root, download=download, **split_kwargs)
    except Exception as e:  # offline download failures surface as URLError, OSError or RuntimeError
        hint = info.files_hint.replace("{root}", os.path.abspath(root))
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        present = _dataset_files_present(cls, root)
        if present:  # torchvision checks sizes and md5 sums, then tries a download that fails offline
            tried = " and could not be replaced by a download" if download else ""
            raise DataError(f"{cls.__name__} files in {present} are incomplete or corrupt{tried} ({reason}); {hint}") from None
        raise DataError(f"{cls.__name__} not found in {root} and could not be downloaded ({reason}); {hint}") from None


def _use_debian_fashion_mnist(root):
    """Copy the Debian package's idx files into the layout torchvision's FashionMNIST reads."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all(os.path.exists(os.path.join(raw, n)) for n in names):
        return
    if not all(os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, n + ".gz")) for n in names):
        return
    os.makedirs(raw, exist_ok=True)
    for n in names:
        tmp = os.path.join(raw, n + ".tmp")
        with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, n + ".gz"), "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, os.path.join(raw, n))


def _as_nchw(images):
    images = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
    if images.ndim == 3:  # (N, H, W) grey
        return images[:, None].contiguous()
    return images.permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)


def load_arrays(config):
    """(train, test, class_names) for a built-in dataset, as uint8 tensors."""
    name, root, download = config.data.dataset, config.data.data_dir, config.data.download
    info = DATASET_INFO[name]
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        images = torch.as_tensor(np.round(digits.images * (255 / 16)), dtype=torch.uint8)[:, None]  # 0..16 -> 0..255
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        # a fixed held-out test set (20%), independent of the run's seed, like a published split
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels.numpy(), random_state=0)
        return (ArraySplit(images[train_idx], labels[train_idx]), ArraySplit(images[test_idx], labels[test_idx]),
                [str(i) for i in range(10)])
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        splits = [_torchvision_dataset(cls, root, train, download, info) for train in (True, False)]
        arrays = [ArraySplit(_as_nchw(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)) for ds in splits]
        return arrays[0], arrays[1], list(splits[0].classes)
    if name in ("fashion_mnist", "mnist"):
        cls = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
        if name == "fashion_mnist":
            _use_debian_fashion_mnist(root)
        splits = [_torchvision_dataset(cls, root, train, download, info) for train in (True, False)]
        arrays = [ArraySplit(_as_nchw(ds.data.numpy()), ds.targets.to(torch.int64)) for ds in splits]
        return arrays[0], arrays[1], list(splits[0].classes)
    if name == "svhn":
        splits = [_torchvision_dataset(datasets.SVHN, root, None, download, info, split=s) for s in ("train", "test")]
        arrays = [ArraySplit(torch.as_tensor(ds.data, dtype=torch.uint8), torch.as_tensor(ds.labels, dtype=torch.int64)) for ds in splits]
        return arrays[0], arrays[1], [str(i) for i in range(10)]
    raise DataError(f"data.dataset {name!r} has no array form")


def stratified_split(labels, val_fraction, seed):
    """Seeded, stratified (train_indices, val_indices) of a label vector."""
    from sklearn.model_selection import train_test_split
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and round(val_fraction * len(labels)) >= len(counts[counts > 0]) else None
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=stratify, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


# ------------------------------------------------------------------------------------------
# Augmentation on batches (device-agnostic)


def batch_generator(seed, epoch, index, device):
    """The random stream of one batch: a function of (seed, epoch, batch index) only."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
    return gen


def random_crop_flip(images, padding, hflip, gen):
    """Per-sample random translation within a reflect-padded copy, and a random mirror: (B, C, H, W)."""
    batch, _, height, width = images.shape
    if padding:
        padded = F.pad(images, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (batch,), device=images.device, generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (batch,), device=images.device, generator=gen)
        rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
        images = padded.gather(2, rows.expand(-1, padded.shape[1], -1, padded.shape[3]))
        images = images.gather(3, cols.expand(-1, images.shape[1], height, -1))
    if hflip:
        flip = torch.rand(batch, device=images.device, generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def random_erase(images, prob, gen):
    """Per-sample random erasing (as v2.RandomErasing: area 2-33%, aspect 0.3-3.3, value 0)."""
    batch, _, height, width = images.shape
    device = images.device
    area = torch.empty(batch, device=device).uniform_(0.02, 0.33, generator=gen) * height * width
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(0.3), math.log(1 / 0.3), generator=gen)
    h = (area * log_ratio.exp()).sqrt().round().clamp(1, height).long()
    w = (area / log_ratio.exp()).sqrt().round().clamp(1, width).long()
    top = (torch.rand(batch, device=device, generator=gen) * (height - h + 1)).long()
    left = (torch.rand(batch, device=device, generator=gen) * (width - w + 1)).long()
    erase = torch.rand(batch, device=device, generator=gen) < prob
    ys, xs = torch.arange(height, device=device), torch.arange(width, device=device)
    inside = ((ys[None, :, None] >= top[:, None, None]) & (ys[None, :, None] < (top + h)[:, None, None])
              & (xs[None, None, :] >= left[:, None, None]) & (xs[None, None, :] < (left + w)[:, None, None]))
    return images.masked_fill((inside & erase[:, None, None])[:, None], 0.0)


def mix_batch(images, labels, num_classes, mixup_alpha, cutmix_alpha, seed, epoch, index, prob=1.0):
    """MixUp or CutMix (torchvision.transforms.v2), chosen at random per batch; soft labels (B, K).
    With prob < 1 a batch is mixed with that probability (timm's mixup_prob), and otherwise keeps its
    images, its labels one-hot: the same shapes and dtypes, so a recorded CUDA graph serves both.

    v2's samplers use the global CPU generator, so it is forked and seeded per batch.
    """
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed((seed * 7_919 + epoch * 104_729 + index) % (2**63))
        # no draw at prob 1, so the mixing of runs before mix_prob existed is drawn as it was
        if prob < 1 and torch.rand(()).item() >= prob:
            return images, F.one_hot(labels, num_classes).float()  # float32, as v2's MixUp/CutMix give
        return v2.RandomChoice(choices)(images, labels)


# ------------------------------------------------------------------------------------------
# Loaders


class ResidentLoader:
    """Batches of a uint8 dataset kept on `device`, augmented there. Yields (float images, labels).

    With world_size > 1 each rank takes every world_size-th index of the shared permutation.
    """

    def __init__(self, split, batch_size, device, mean, std, train, seed=0, padding=0, hflip=False,
                 random_erasing=0.0, auto_augment=None, drop_last=False, rank=0, world_size=1):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device, self.train, self.seed = batch_size, torch.device(device), train, seed
        self.padding, self.hflip, self.random_erasing, self.auto_augment = padding, hflip, random_erasing, auto_augment
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _indices(self):
        n = len(self.labels)
        if self.train:
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # equal shards: pad by wrapping so every rank runs the same number of steps
            total = math.ceil(n / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - n]])[self.rank::self.world_size]
        return order.to(self.device)

    def __len__(self):
        n = math.ceil(len(self.labels) / self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, start=0):
        """Batches from index `start` on (a resumed epoch skips what it already did, for free)."""
        order = self._indices()
        for index in range(start, len(self)):
            idx = order[index * self.batch_size:(index + 1) * self.batch_size]
            images, labels = self.images[idx], self.labels[idx]
            if self.train:
                gen = batch_generator(self.seed, self.epoch, index, self.device)
                if self.auto_augment is not None:
                    images = self._auto_augment(images, index)
                images = random_crop_flip(images, self.padding, self.hflip, gen)
            images = (images.float() - self.mean) / self.std
            if self.train and self.random_erasing > 0:
                images = random_erase(images, self.random_erasing, gen)
            yield images, labels

    def _auto_augment(self, images, index, group=16):
        """v2 auto-augment draws one operation per call; calls on groups of `group` images keep it batched."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.seed * 31 + self.epoch * 7_907 + index) % (2**63))
            return torch.cat([self.auto_augment(chunk) for chunk in images.split(group)])

    def __iter__(self):
        return self.batches()


class _ImageFolderChecked(datasets.ImageFolder):
    """ImageFolder whose unreadable files raise DataError naming the file."""

    def __getitem__(self, index):
        path = self.samples[index][0]
        try:
            return super().__getitem__(index)
        except Exception as e:
            raise unreadable_image(path, e) from None


def unreadable_image(path, error):
    return DataError(f"cannot read image {path} ({type(error).__name__}: {error}); delete or replace the file")


def error_line(error):
    """An error's message as one line, also when a DataLoader worker re-raised it with the worker's
    traceback in front (torch keeps the type and prepends the traceback to the message)."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


class _Transformed(torch.utils.data.Dataset):
    """A uint8 ArraySplit (or any dataset of (image, label)) seen through a transform."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        return self.transform(image), label


class _ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split.labels)

    def __getitem__(self, index):
        return v2.functional.to_image(self.split.images[index]), int(self.split.labels[index])


def make_transform(info, cfg, train):
    steps = [v2.ToImage(), v2.Resize((info.img_size, info.img_size), antialias=True)]
    if train:
        if cfg.crop_padding:
            steps.append(v2.RandomCrop(info.img_size, padding=cfg.crop_padding, padding_mode="reflect"))
        if _hflip(info, cfg):
            steps.append(v2.RandomHorizontalFlip())
        if cfg.auto_augment != "none":
            steps.append(_auto_augment_op(cfg))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    if train and cfg.random_erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.random_erasing, value=0))
    return v2.Compose(steps)


def _auto_augment_op(cfg):
    if cfg.auto_augment == "randaugment":
        return v2.RandAugment(magnitude=cfg.randaugment_magnitude)
    return v2.TrivialAugmentWide()


def _hflip(info, cfg):
    return info.hflip if cfg.hflip is None else cfg.hflip


def leave_stop_signals_to_the_main_process(worker_id):
    """Each DataLoader worker leaves the main process's process group. Ctrl-C in a terminal and
    `timeout` signal the whole group; a worker killed by that signal made the main process raise
    instead of saving its checkpoint. Out of the group, the workers are stopped by the main process
    alone (torch's shutdown), and exit on their own if it dies. (Ignoring SIGTERM instead would
    also ignore torch's own terminate() at exit, which then waits for the worker forever.)"""
    if hasattr(os, "setpgid"):  # POSIX
        with contextlib.suppress(OSError):  # not allowed (a session leader): keep the default behaviour
            os.setpgid(0, 0)


class EpochDataLoader:
    """A DataLoader whose shuffle and worker seeds are fixed by (seed, epoch), with set_epoch and
    a resumable start index, and a DistributedSampler when world_size > 1."""

    def __init__(self, dataset, batch_size, train, seed, num_workers, pin_memory, rank=0, world_size=1):
        self.dataset, self.train, self.seed, self.epoch = dataset, train, seed, 0
        self.generator = torch.Generator()
        sampler = None
        if world_size > 1:
            sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=train, seed=seed)
        self.sampler = sampler
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
            num_workers=num_workers, pin_memory=pin_memory, drop_last=False, generator=self.generator,
            persistent_workers=False, worker_init_fn=leave_stop_signals_to_the_main_process)

    def set_epoch(self, epoch):
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def batches(self, start=0):
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        for index, batch in enumerate(self.loader):
            if index >= start:
                yield batch

    def __iter__(self):
        return self.batches()


@dataclass
class DataBundle:
    train: object
    val: object
    test: object
    class_names: list
    info: DatasetInfo
    resident: bool


RESIDENT_IMAGEFOLDER_MAX_BYTES = 4 * 2**30  # decoded uint8 size up to which auto keeps an ImageFolder in memory


def use_resident(config, device, num_images=0, info=None):
    mode = config.data.gpu_resident
    if config.data.dataset == "digits":
        return True
    if config.data.dataset == "imagefolder" and mode == "auto":
        fits = num_images * info.in_chans * info.img_size ** 2 <= RESIDENT_IMAGEFOLDER_MAX_BYTES
        return torch.device(device).type == "cuda" and fits
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def resize_split(split, img_size, chunk=4096):
    """An ArraySplit with its images resized as make_transform's Resize does (antialiased, uint8)."""
    resize = functools.partial(v2.functional.resize, size=[img_size, img_size], antialias=True)
    images = torch.cat([resize(part) for part in split.images.split(chunk)])  # (N, C, img_size, img_size)
    return ArraySplit(images, split.labels)


def decode_image_folder(dataset, img_size, workers=None):
    """Every image of a checked ImageFolder decoded, resized to img_size and stacked: an ArraySplit.

    Worker processes decode in parallel: for small images the per-file work is mostly Python,
    which threads would serialise on the GIL (60k CIFAR-size JPEGs: ~14 s on one core)."""
    from concurrent.futures import ProcessPoolExecutor

    paths = [path for path, _ in dataset.samples]
    decode = functools.partial(_decode_file, img_size=img_size, loader=dataset.loader)
    workers = workers or min(16, os.cpu_count() or 1)
    if workers == 1 or len(paths) < DECODE_POOL_MIN_IMAGES:  # a pool costs more than it saves
        images = list(map(decode, paths))
    else:
        import multiprocessing
        # fork where there is one: workers start at once, without re-importing torch
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            images = list(pool.map(decode, paths, chunksize=max(1, min(512, len(paths) // (4 * workers)))))
    labels = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
    return ArraySplit(_as_nchw(np.stack(images)), labels)


def _decode_file(path, img_size, loader):
    from PIL import Image
    try:
        img = loader(path)  # RGB
    except Exception as e:
        raise unreadable_image(path, e) from None
    if img.size != (img_size, img_size):
        img = img.resize((img_size, img_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


# The test images held out of an ImageFolder tree that has no val/ or test/ folder are chosen with
# this seed, not the training seed: runs with different seeds are tested on the same images.
HELD_OUT_TEST_SEED = 0


def _imagefolder_splits(root, test_fraction):
    """(train, test) ImageFolders of root/train and root/val (or root/test). Without an evaluation
    folder, a stratified test_fraction of root/train, or of root itself when its subfolders are
    the classes, is held out as the test set."""
    train_dir = os.path.join(root, "train")
    eval_dir = next((os.path.join(root, d) for d in ("val", "test") if os.path.isdir(os.path.join(root, d))), None)
    source = train_dir if os.path.isdir(train_dir) else root
    layout = DATASET_INFO["imagefolder"].files_hint.replace("{root}", root)
    if not os.path.isdir(root) or (eval_dir is not None and source == root):
        raise DataError(f"no ImageFolder tree at {root}: {layout}")
    try:
        train = _ImageFolderChecked(source)
        test = _ImageFolderChecked(eval_dir) if eval_dir is not None else None
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"ImageFolder tree at {root} is unusable ({' '.join(str(e).split())}); {layout}") from None
    if test is None:
        keep, held_out = stratified_split(train.targets, test_fraction, HELD_OUT_TEST_SEED)
        return _with_samples(train, keep), _with_samples(train, held_out)
    if train.classes != test.classes:
        raise DataError(f"{train_dir} and {eval_dir} have different class folders ({len(train.classes)} vs {len(test.classes)})")
    return train, test


def _with_samples(folder, indices):
    """The same ImageFolder (classes, loader, checks) restricted to some of its images."""
    part = copy.copy(folder)
    part.samples = part.imgs = [folder.samples[i] for i in indices]
    part.targets = [target for _, target in part.samples]
    return part


def create_data_loaders(config, device="cpu", rank=0, world_size=1):
    """Train (augmented, shuffled; this rank's shard), validation (carved from train) and test
    loaders (whole splits: in a distributed run rank 0 alone evaluates)."""
    cfg, seed = config.data, config.training.seed
    info = dataset_info(config)
    device = torch.device(device)
    if cfg.dataset == "imagefolder":
        train_folder, test_folder = _imagefolder_splits(cfg.data_dir, cfg.test_fraction)
        class_names = list(train_folder.classes)
        info = DatasetInfo(**{**info.__dict__, "num_classes": len(class_names)})
        train_idx, val_idx = stratified_split([t for _, t in train_folder.samples], cfg.val_fraction, seed)
        resident = use_resident(config, device, len(train_folder) + len(test_folder), info)
        if resident:
            train_full, test_split = (decode_image_folder(f, info.img_size) for f in (train_folder, test_folder))
        else:
            train_base, val_base, test_base = (torch.utils.data.Subset(train_folder, train_idx),
                                               torch.utils.data.Subset(train_folder, val_idx), test_folder)
    else:
        train_full, test_split, class_names = load_arrays(config)
        train_idx, val_idx = stratified_split(train_full.labels.numpy(), cfg.val_fraction, seed)
        resident = use_resident(config, device)
        if resident and train_full.images.shape[-1] != info.img_size:
            # Resize is the transforms' one deterministic step: doing it once keeps the data resident
            train_full, test_split = (resize_split(s, info.img_size) for s in (train_full, test_split))
        if not resident:  # resizing happens in the DataLoader transforms
            full = _ArrayDataset(train_full)
            train_base, val_base = torch.utils.data.Subset(full, train_idx), torch.utils.data.Subset(full, val_idx)
            test_base = _ArrayDataset(test_split)
    if resident:
        train_split = ArraySplit(train_full.images[train_idx], train_full.labels[train_idx])
        val_split = ArraySplit(train_full.images[val_idx], train_full.labels[val_idx])

    if resident:
        auto_augment = _auto_augment_op(cfg) if cfg.auto_augment != "none" else None
        train = ResidentLoader(train_split, cfg.batch_size, device, info.mean, info.std, train=True, seed=seed,
                               padding=cfg.crop_padding, hflip=_hflip(info, cfg), random_erasing=cfg.random_erasing,
                               auto_augment=auto_augment, drop_last=True, rank=rank, world_size=world_size)
        val, test = (ResidentLoader(s, cfg.eval_batch_size, device, info.mean, info.std, train=False)
                     for s in (val_split, test_split))
    else:
        pin = device.type == "cuda"
        train = EpochDataLoader(_Transformed(train_base, make_transform(info, cfg, True)), cfg.batch_size, True, seed,
                                cfg.num_workers, pin, rank, world_size)
        val, test = (EpochDataLoader(_Transformed(b, make_transform(info, cfg, False)), cfg.eval_batch_size, False, seed,
                                     cfg.num_workers, pin) for b in (val_base, test_base))
    return DataBundle(train, val, test, class_names, info, resident)
