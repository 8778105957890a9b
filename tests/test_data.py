"""Data loaders on small files written in the real on-disk formats, read by the real torchvision classes."""
import gzip
import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets

import data_pipeline
import evaluate_model
import train_vision_mamba
from config import apply_overrides, get_preset
from data_pipeline import (ArraySplit, DataError, EpochDataLoader, ResidentLoader, _ArrayDataset, _Transformed,
                           create_data_loaders, make_transform, mix_batch, random_crop_flip, random_erase, resize_split,
                           stratified_split)
from helpers import SMALL, assert_png, read_log

N_TRAIN, N_TEST = 80, 30


def fake_images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def labels_for(n, classes):
    return [i % classes for i in range(n)]


def write_cifar(root, hundred=False):
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder)
    classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"

    def dump(name, n, seed):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": fake_images(n, (3072,), seed), label_key: labels_for(n, classes)}, f)

    if hundred:
        dump("train", N_TRAIN * 2, 0)
        dump("test", N_TEST, 1)
        meta = {"fine_label_names": [f"class{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        for i in range(1, 6):
            dump(f"data_batch_{i}", N_TRAIN // 5, i)
        dump("test_batch", N_TEST, 9)
        meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
        meta_name = "batches.meta"
    with open(os.path.join(folder, meta_name), "wb") as f:
        pickle.dump(meta, f)


def idx_bytes(array):
    magic = 0x00000800 + array.ndim  # type code 0x08: unsigned byte
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder, compress=False):
    os.makedirs(folder, exist_ok=True)
    files = {"train-images-idx3-ubyte": fake_images(N_TRAIN, (28, 28), 0),
             "train-labels-idx1-ubyte": np.array(labels_for(N_TRAIN, 10), dtype=np.uint8),
             "t10k-images-idx3-ubyte": fake_images(N_TEST, (28, 28), 1),
             "t10k-labels-idx1-ubyte": np.array(labels_for(N_TEST, 10), dtype=np.uint8)}
    for name, array in files.items():
        data = idx_bytes(array)
        if compress:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def write_svhn(root):
    os.makedirs(root, exist_ok=True)
    for name, n in (("train_32x32.mat", N_TRAIN), ("test_32x32.mat", N_TEST)):
        images = fake_images(n, (32, 32, 3), n).transpose(1, 2, 3, 0)  # SVHN stores (H, W, C, N)
        labels = np.array([(i % 10) or 10 for i in range(n)], dtype=np.uint8)[:, None]  # digit 0 is stored as 10
        scipy.io.savemat(os.path.join(root, name), {"X": images, "y": labels})


@pytest.fixture
def trust_checksums(monkeypatch):
    """torchvision checks CIFAR and SVHN files against the official md5 sums; these are tiny stand-ins."""
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(datasets.SVHN, "_check_integrity", lambda self: True)


def run_training(tmp_path, data_dir, config, *extra):
    code = train_vision_mamba.main(["--config", config, "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"),
                                    "--epochs", "1", "--batch_size", "16", *SMALL, "--set", "data.download=false",
                                    "--set", "data.num_workers=0", *extra])
    assert code == 0
    return read_log(tmp_path / "out", f"vision_mamba_{config}")


@pytest.mark.parametrize("config,writer,classes", [
    ("cifar10", lambda root: write_cifar(root), 10),
    ("cifar100", lambda root: write_cifar(root, hundred=True), 100),
    ("mnist", lambda root: write_idx_set(os.path.join(root, "MNIST", "raw")), 10),
    ("fashion_mnist", lambda root: write_idx_set(os.path.join(root, "FashionMNIST", "raw")), 10),
    ("svhn", lambda root: write_svhn(root), 10),
])
def test_end_to_end_training_on_each_builtin_format(tmp_path, trust_checksums, config, writer, classes):
    writer(str(tmp_path / "data"))
    log = run_training(tmp_path, tmp_path / "data", config)
    assert log["finished"] and 0 <= log["test_acc"] <= 1
    assert log["config"]["data"]["dataset"] == config
    state = torch.load(tmp_path / "out" / "checkpoints" / f"vision_mamba_{config}" / "best_model.pth", weights_only=True)
    assert state["model_shape"]["num_classes"] == classes and len(state["class_names"]) == classes
    assert_png(tmp_path / "out" / "logs" / f"vision_mamba_{config}" / "confusion_matrix.png")


def test_cifar_on_the_resident_path_matches_labels_and_shapes(tmp_path, trust_checksums):
    write_cifar(str(tmp_path / "data"))
    config = apply_overrides(get_preset("cifar10"), {"data.data_dir": str(tmp_path / "data"), "data.download": False,
                                                      "data.gpu_resident": "on", "data.batch_size": 8})
    data = create_data_loaders(config, "cpu")
    assert data.resident and data.class_names[0] == "airplane"
    images, labels = next(iter(data.train))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64


def test_a_resized_array_dataset_stays_resident(tmp_path, trust_checksums):
    write_cifar(str(tmp_path / "data"))
    config = apply_overrides(get_preset("cifar10"), {"data.data_dir": str(tmp_path / "data"), "data.download": False,
                                                      "data.gpu_resident": "on", "data.batch_size": 8, "data.img_size": 40})
    data = create_data_loaders(config, "cpu")
    assert data.resident and data.info.img_size == 40
    for loader in (data.train, data.val, data.test):
        images, _ = next(iter(loader))
        assert images.shape[1:] == (3, 40, 40)


def test_fashion_mnist_reads_the_debian_package_layout(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_idx_set(str(debian), compress=True)
    monkeypatch.setattr(data_pipeline, "DEBIAN_FASHION_MNIST", str(debian))
    config = apply_overrides(get_preset("fashion_mnist"), {"data.data_dir": str(tmp_path / "data"), "data.download": False})
    train, test, classes = data_pipeline.load_arrays(config)
    assert train.images.shape == (N_TRAIN, 1, 28, 28) and test.images.shape == (N_TEST, 1, 28, 28)
    assert classes[0] == "T-shirt/top"


@pytest.mark.parametrize("config,expected", [("cifar10", "cifar-10-python.tar.gz"), ("fashion_mnist", "train-images-idx3-ubyte.gz"),
                                             ("svhn", "train_32x32.mat"), ("cifar100", "cifar-100-python")])
def test_missing_data_names_the_files_and_where(tmp_path, monkeypatch, config, expected):
    monkeypatch.setattr(data_pipeline, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))
    cfg = apply_overrides(get_preset(config), {"data.data_dir": str(tmp_path / "empty"), "data.download": False})
    with pytest.raises(DataError) as error:
        data_pipeline.load_arrays(cfg)
    assert expected in str(error.value) and str(tmp_path / "empty") in str(error.value)


def write_image_folder(root, split_names=("train", "val"), per_class=8, size=12):
    for split in split_names:
        for c in ("cat", "dog", "fox"):
            folder = os.path.join(root, split, c)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(fake_images(1, (size, size, 3), hash((split, c, i)) % 1000)[0]).save(os.path.join(folder, f"{i}.png"))


@pytest.mark.parametrize("resident", ["off", "on"])
def test_image_folder_trains_and_resizes(tmp_path, resident):
    write_image_folder(str(tmp_path / "tree"), ("train", "test"))
    log = run_training(tmp_path, tmp_path / "tree", "imagefolder", "--set", "data.img_size=16", "--set",
                       f"data.gpu_resident={resident}", "--set", "data.val_fraction=0.2")
    assert log["gpu_resident_data"] == (resident == "on")
    state = torch.load(tmp_path / "out" / "checkpoints" / "vision_mamba_imagefolder" / "final_model.pth", weights_only=True)
    assert state["class_names"] == ["cat", "dog", "fox"] and state["model_shape"]["img_size"] == 16


@pytest.mark.parametrize("config,writer,place", [
    ("cifar10", write_cifar, "cifar-10-batches-py"),  # real md5 checks reject the stand-in files
    ("fashion_mnist", lambda root: write_idx_set(os.path.join(root, "FashionMNIST", "raw")), "FashionMNIST/raw"),
])
def test_damaged_dataset_files_are_named_not_called_missing(tmp_path, config, writer, place, capsys, monkeypatch):
    monkeypatch.setattr(data_pipeline, "DEBIAN_FASHION_MNIST", str(tmp_path / "no_debian_copy"))
    writer(str(tmp_path / "data"))
    if config == "fashion_mnist":  # cut the training images short: torchvision's reader then fails
        images = tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:1000])
    code = train_vision_mamba.main(["--config", config, "--data_dir", str(tmp_path / "data"), "--output_dir",
                                    str(tmp_path / "out"), "--epochs", "1", "--set", "data.download=false"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"files in {tmp_path / 'data' / place} are incomplete or corrupt (" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("resident,workers", [("off", 0), ("off", 1), ("on", 0)])
def test_corrupt_image_is_named_and_exits_2(tmp_path, resident, workers, capsys):
    # with a worker process torch re-raises the error with the worker's traceback in its message
    write_image_folder(str(tmp_path / "tree"))
    bad = tmp_path / "tree" / "train" / "dog" / "3.png"
    bad.write_bytes(b"not a png at all")
    code = train_vision_mamba.main(["--config", "imagefolder", "--data_dir", str(tmp_path / "tree"), "--output_dir",
                                    str(tmp_path / "out"), "--epochs", "1", "--batch_size", "4", *SMALL,
                                    "--set", f"data.gpu_resident={resident}", "--set", f"data.num_workers={workers}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_image_folder_decoded_by_worker_processes_equals_in_process(tmp_path, monkeypatch):
    import data_pipeline
    write_image_folder(str(tmp_path / "tree"), ("train",), size=12)
    folder = data_pipeline._ImageFolderChecked(str(tmp_path / "tree" / "train"))
    alone = data_pipeline.decode_image_folder(folder, 8, workers=1)
    monkeypatch.setattr(data_pipeline, "DECODE_POOL_MIN_IMAGES", 0)
    pooled = data_pipeline.decode_image_folder(folder, 8, workers=2)
    assert alone.images.shape == (len(folder), 3, 8, 8) and torch.equal(alone.images, pooled.images)
    assert torch.equal(alone.labels, pooled.labels) and alone.labels.tolist() == [t for _, t in folder.samples]
    bad = tmp_path / "tree" / "train" / "fox" / "1.png"
    bad.write_bytes(b"truncated")
    with pytest.raises(DataError, match="cannot read image .*1.png"):
        data_pipeline.decode_image_folder(folder, 8, workers=2)


@pytest.mark.parametrize("layout", ["classes_at_the_root", "train_only"])
def test_image_folder_without_an_evaluation_folder_holds_out_a_fixed_test_set(tmp_path, layout):
    root = tmp_path / "tree"
    write_image_folder(str(root), ("train",), per_class=10)
    if layout == "classes_at_the_root":
        for name in ("cat", "dog", "fox"):
            shutil.move(str(root / "train" / name), str(root / name))
        (root / "train").rmdir()
    train, test = data_pipeline._imagefolder_splits(str(root), 0.2)
    train_paths, test_paths = {p for p, _ in train.samples}, {p for p, _ in test.samples}
    assert len(train_paths) == 24 and len(test_paths) == 6 and not train_paths & test_paths
    assert sorted(t for _, t in test.samples) == [0, 0, 1, 1, 2, 2] and train.classes == test.classes == ["cat", "dog", "fox"]
    # the same images every time: not drawn with the training seed
    assert {p for p, _ in data_pipeline._imagefolder_splits(str(root), 0.2)[1].samples} == test_paths
    # training and then evaluating the checkpoint see that same held-out test set
    log = run_training(tmp_path, root, "imagefolder", "--set", "data.img_size=16", "--set", "data.test_fraction=0.2",
                       "--seed", "3")
    assert log["finished"]
    checkpoint = tmp_path / "out" / "checkpoints" / "vision_mamba_imagefolder" / "final_model.pth"
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "ev")]) == 0
    with open(tmp_path / "ev" / "metrics.json") as f:
        assert json.load(f)["num_samples"] == 6


def test_image_folder_with_val_but_no_train_folder_is_refused(tmp_path):
    write_image_folder(str(tmp_path / "tree"), ("val",))
    config = apply_overrides(get_preset("imagefolder"), {"data.data_dir": str(tmp_path / "tree")})
    with pytest.raises(DataError, match="no ImageFolder tree .*train/<class>"):
        create_data_loaders(config)


def test_missing_image_folder_tree(tmp_path):
    config = apply_overrides(get_preset("imagefolder"), {"data.data_dir": str(tmp_path)})
    with pytest.raises(DataError, match="train/<class>"):
        create_data_loaders(config)


# ------------------------------------------------------------------------------------------
# Augmentation semantics and loader mechanics


def test_random_crop_is_a_translation_of_the_reflect_padded_image():
    images = torch.rand(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, 2, False, gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    shifts = set()
    for i in range(16):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, i
        shifts.add(matches[0])
    assert len(shifts) > 3  # the translation really varies per sample


def test_flip_mirrors_about_half_the_samples_and_nothing_else():
    images = torch.rand(2000, 1, 4, 4)
    out = random_crop_flip(images, 0, True, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped | kept).all()) and 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator()), images)


def test_random_erasing_area_matches_torchvision_ranges():
    images = torch.ones(500, 3, 32, 32)
    out = random_erase(images, 1.0, torch.Generator().manual_seed(0))
    fraction = (out[:, 0] == 0).float().mean((1, 2))
    assert fraction.min() >= 0.015 and fraction.max() <= 0.36
    assert torch.equal(random_erase(images, 0.0, torch.Generator()), images)


def test_mixing_is_seeded_per_batch_and_mixes_each_image_with_its_neighbour():
    images, labels = torch.rand(16, 1, 8, 8), torch.arange(16) % 7  # every label differs from its neighbour's
    state = torch.get_rng_state()
    images_out, targets = mix_batch(images, labels, 7, 0.8, 1.0, seed=3, epoch=2, index=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
    again = mix_batch(images, labels, 7, 0.8, 1.0, seed=3, epoch=2, index=7)
    assert torch.equal(again[0], images_out) and torch.equal(again[1], targets)
    assert not torch.equal(mix_batch(images, labels, 7, 0.8, 1.0, seed=3, epoch=2, index=8)[1], targets)
    # v2's MixUp and CutMix pair each image with the one before it in the batch, with one weight for the batch
    assert targets.shape == (16, 7) and targets.dtype == torch.float32
    lam = targets[0, labels[0]]
    own, other = F.one_hot(labels, 7).float(), F.one_hot(labels.roll(1), 7).float()
    assert 0 < lam < 1 and torch.allclose(targets, lam * own + (1 - lam) * other, atol=1e-6)
    neighbour = images.roll(1, 0)
    blended = torch.isclose(images_out, lam * images + (1 - lam) * neighbour, atol=1e-6)  # MixUp
    pasted = torch.isclose(images_out, images) | torch.isclose(images_out, neighbour)  # CutMix
    assert bool((blended | pasted).all()) and not torch.equal(images_out, images)


def test_mix_prob_leaves_the_other_batches_with_their_images_and_one_hot_labels():
    images, labels = torch.rand(8, 1, 6, 6), torch.arange(8) % 4
    mixed = 0
    for index in range(400):
        images_out, targets = mix_batch(images, labels, 4, 0.8, 1.0, seed=0, epoch=0, index=index, prob=0.3)
        assert targets.shape == (8, 4) and targets.dtype == torch.float32  # one graph shape for both kinds of batch
        if torch.equal(images_out, images):
            assert torch.equal(targets, F.one_hot(labels, 4).float())
        else:
            mixed += 1
    assert 0.24 < mixed / 400 < 0.36  # 0.3 +- 2.6 standard deviations of the binomial


@pytest.mark.parametrize("img_size", [8, 12, 6])
def test_resident_and_dataloader_paths_give_identical_eval_batches(img_size):
    split = ArraySplit(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    info = data_pipeline.DatasetInfo(4, 3, img_size, mean, std, True, "")
    cfg = get_preset("cifar10").data
    resident = ResidentLoader(resize_split(split, img_size, chunk=7), 8, "cpu", mean, std, train=False)
    loader = EpochDataLoader(_Transformed(_ArrayDataset(split), make_transform(info, cfg, train=False)), 8, False, 0, 0, False)
    for (a, la), (b, lb) in zip(resident, loader):
        assert torch.equal(la, lb) and torch.allclose(a, b, atol=1e-5)


def test_resident_loader_resumes_mid_epoch_and_shards_across_ranks():
    split = ArraySplit(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8), torch.arange(50) % 5)
    loader = ResidentLoader(split, 4, "cpu", (0.5,), (0.5,), train=True, seed=3, padding=1, hflip=True, random_erasing=0.5)
    loader.set_epoch(2)
    full = list(loader.batches())
    resumed = list(loader.batches(start=5))
    assert len(resumed) == len(full) - 5
    for (a, la), (b, lb) in zip(full[5:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[1], full[0][1])  # a new epoch reshuffles

    shards = [ResidentLoader(split, 5, "cpu", (0.5,), (0.5,), train=True, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([lab for _, lab in s]) for s in shards]
    idx = [s._indices() for s in shards]
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(idx[0].tolist()).isdisjoint(idx[1].tolist()) and set(idx[0].tolist()) | set(idx[1].tolist()) == set(range(50))
    assert all(len(s) == 25 for s in seen)


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    labels = np.array([0] * 80 + [1] * 20)
    train_a, val_a = stratified_split(labels, 0.25, seed=1)
    train_b, val_b = stratified_split(labels, 0.25, seed=1)
    assert np.array_equal(val_a, val_b) and len(val_a) == 25
    assert (labels[val_a] == 1).sum() == 5
    assert set(train_a).isdisjoint(val_a)
    assert not np.array_equal(stratified_split(labels, 0.25, seed=2)[1], val_a)
