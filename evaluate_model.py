"""Evaluate a trained Vision Mamba checkpoint, or predict on your own pictures.

    python evaluate_model.py --checkpoint ./checkpoints/vision_mamba_cifar10/best_model.pth --output_dir ./evaluation_results
    python evaluate_model.py --checkpoint best_model.pth --images cat.png dog.jpg my_pictures/ --top_k 3

The model is rebuilt from the config stored in the checkpoint and evaluated on the dataset it
was trained on (the test split by default; --split val gives the validation split carved from
the training set with the run's seed), with the run's own test-time views (training.tta,
training.tta_shift) unless --tta/--no-tta or --tta_shift say otherwise. Writes metrics.json,
classification_report.txt, confusion_matrix.png/.csv, per_class_accuracy.png,
sample_predictions.png and misclassified.png.
Exit code 2 with one line for a missing, corrupt, unsafe or incompatible checkpoint.
"""
import argparse
import csv
import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from checkpoints import CheckpointError, atomic_write, load_checkpoint, model_from_checkpoint
from config import MAX_TTA_SHIFT, ConfigError, apply_overrides
from data_pipeline import DataError, create_data_loaders, dataset_info, error_line
from reporting import (classification_metrics, plot_confusion_matrix, plot_image_grid, plot_per_class_accuracy,
                       write_json)
from train_vision_mamba import (USER_ERRORS, OneLineArgumentParser, UsageError, check_backend_env, check_output_writable,
                                loss_and_accuracy, predict, resolve_device)


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output_dir", default=None, help="where the reports go (required unless --images)")
    p.add_argument("--data_dir", default=None, help="dataset location if it moved since training")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    # test-time views default to the run's own (training.tta, training.tta_shift), so that the
    # figure printed here is the one the training script reported for the same checkpoint
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its mirror's (default: as the run was trained)")
    p.add_argument("--tta_shift", type=int, default=None,
                   help=f"also average over the image moved by +/- N pixels on both axes (0 to {MAX_TTA_SHIFT}; "
                        "default: the run's training.tta_shift)")
    p.add_argument("--num_samples", type=int, default=32, help="images in sample_predictions.png / misclassified.png")
    p.add_argument("--images", nargs="+", default=None,
                   help="predict these image files (a folder: every image in it) instead of evaluating a dataset")
    p.add_argument("--top_k", type=int, default=3)
    args = p.parse_args(argv)
    if args.images is None and args.output_dir is None:
        raise UsageError("--output_dir is required (unless you pass --images to predict on your own files)")
    if args.num_samples < 1 or args.top_k < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--num_samples, --top_k and --batch_size must be >= 1")
    if args.tta_shift is not None and not 0 <= args.tta_shift <= MAX_TTA_SHIFT:
        raise UsageError(f"--tta_shift must be 0 (off) to {MAX_TTA_SHIFT} pixels, got {args.tta_shift}")
    return args


def denormalize(images, info):
    """(B, C, H, W) normalised tensors -> list of HxWxC arrays in [0, 1]."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return list((images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy())


def load_image(path, info):
    """One picture file, converted, resized and normalised as in training: (1, C, H, W)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img = img.convert("L" if info.in_chans == 1 else "RGB").resize((info.img_size, info.img_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}); give a PNG or JPEG file") from None
    tensor = torch.from_numpy(array).view(info.img_size, info.img_size, -1).permute(2, 0, 1)
    mean, std = torch.tensor(info.mean).view(-1, 1, 1), torch.tensor(info.std).view(-1, 1, 1)
    return ((tensor - mean) / std)[None]


def image_files(paths):
    """The given paths, each folder replaced by the image files under it (sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                       if name.lower().endswith(IMG_EXTENSIONS))
        if not found:
            raise UsageError(f"{path} holds no image files ({' '.join(IMG_EXTENSIONS)})")
        files += found
    return files


def predict_files(model, paths, info, class_names, device, top_k):
    model.eval()
    results = []
    with torch.no_grad():
        for path in paths:
            probs = F.softmax(model(load_image(path, info).to(device)).float(), dim=1)[0].cpu()
            values, indices = probs.topk(min(top_k, len(class_names)))
            results.append((path, [(class_names[i], float(v)) for v, i in zip(values, indices)]))
    return results


def all_images_at(loader, indices):
    """Images at the given positions of a loader's (fixed) order."""
    wanted, found, offset = sorted(set(int(i) for i in indices)), {}, 0
    for images, _ in loader:
        for i in wanted:
            if offset <= i < offset + len(images):
                found[i] = images[i - offset].cpu()
        offset += len(images)
        if len(found) == len(wanted):
            break
    return torch.stack([found[int(i)] for i in indices]) if len(indices) else torch.empty(0)


def write_reports(output_dir, logits, labels, class_names, info, loader, args, checkpoint_state):
    preds = logits.argmax(1)
    loss, accuracy = loss_and_accuracy(logits, labels)
    metrics, cm, report = classification_metrics(labels.numpy(), preds.numpy(), class_names)
    metrics.update(loss=loss, split=args.split, tta=args.tta, tta_shift=args.tta_shift,
                   checkpoint=os.path.abspath(args.checkpoint), checkpoint_epoch=checkpoint_state.get("epoch"),
                   dataset=checkpoint_state["config"]["data"]["dataset"])
    write_json(os.path.join(output_dir, "metrics.json"), metrics)
    atomic_write(os.path.join(output_dir, "classification_report.txt"), lambda f: f.write(report.encode()))

    def write_csv(f):
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["true\\predicted"] + class_names)
        w.writerows([name] + list(map(int, row)) for name, row in zip(class_names, cm))
        f.write(text.getvalue().encode())

    atomic_write(os.path.join(output_dir, "confusion_matrix.csv"), write_csv)
    plot_confusion_matrix(cm, class_names, os.path.join(output_dir, "confusion_matrix.png"), title=f"{args.split} split")
    plot_per_class_accuracy(metrics["per_class_accuracy"], os.path.join(output_dir, "per_class_accuracy.png"))

    n = min(args.num_samples, len(labels))
    samples = denormalize(all_images_at(loader, list(range(n))), info)
    plot_image_grid(samples, [f"true {class_names[t]}\npred {class_names[p]}" for t, p in zip(labels[:n], preds[:n])],
                    [bool(t != p) for t, p in zip(labels[:n], preds[:n])],
                    os.path.join(output_dir, "sample_predictions.png"), "Sample predictions (red: wrong)")
    confidence = F.softmax(logits, dim=1).max(1).values
    wrong = torch.nonzero(preds != labels).flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][: args.num_samples]
    images = denormalize(all_images_at(loader, worst), info) if len(worst) else []
    plot_image_grid(images, [f"true {class_names[labels[i]]}\npred {class_names[preds[i]]} {confidence[i]:.0%}" for i in worst],
                    [True] * len(worst), os.path.join(output_dir, "misclassified.png"),
                    "Most confident mistakes" if len(worst) else "No mistakes")
    return metrics


def print_summary(metrics, class_names):
    print(f"{'split':<22}{metrics['split']}")
    views = ["image"]
    if metrics["tta"]:
        views.append("mirror")
    if metrics["tta_shift"]:
        views.append(f"{metrics['tta_shift']}-px shifts")
    print(f"{'test-time views':<22}{' + '.join(views)}")
    print(f"{'samples':<22}{metrics['num_samples']}")
    print(f"{'accuracy':<22}{metrics['accuracy']:.4f}")
    print(f"{'loss':<22}{metrics['loss']:.4f}")
    print(f"{'macro F1':<22}{metrics['macro']['f1']:.4f}")
    print(f"{'weighted F1':<22}{metrics['weighted']['f1']:.4f}")
    per_class = sorted(metrics["per_class_accuracy"].items(), key=lambda kv: kv[1])
    print("weakest classes       " + ", ".join(f"{name} {acc:.3f}" for name, acc in per_class[:3]))


def main(argv=None):
    try:
        args = parse_args(argv)
        check_backend_env()
        state = load_checkpoint(args.checkpoint)
        model, config = model_from_checkpoint(state, args.checkpoint)
        device = resolve_device(args.device)
        overrides = {"training.device": args.device}
        if args.data_dir:
            overrides["data.data_dir"] = args.data_dir
        if args.batch_size:
            overrides["data.eval_batch_size"] = args.batch_size
        config = apply_overrides(config, overrides)
        class_names = list(state.get("class_names") or [])
        model = model.to(device)
        if args.images:
            info = dataset_info(config)
            if state.get("model_shape"):
                info = info.__class__(**{**info.__dict__, **state["model_shape"]})
            for path, top in predict_files(model, image_files(args.images), info, class_names, device, args.top_k):
                print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
            return 0
        check_output_writable(args.output_dir)
        try:
            data = create_data_loaders(config, device)
        except DataError as e:
            if args.data_dir:
                raise
            raise DataError(f"{error_line(e)} (the data_dir stored in {args.checkpoint}; if the data moved since "
                            "training, give --data_dir)") from None
        if data.class_names != class_names:
            raise CheckpointError(f"{args.checkpoint} was trained on classes {class_names[:5]}... but the data has "
                                  f"{data.class_names[:5]}...; point --data_dir at the training data")
        loader = data.test if args.split == "test" else data.val
        # recorded as applied: no mirror for datasets whose mirror image changes the label
        args.tta = bool(config.training.tta if args.tta is None else args.tta) and data.info.hflip
        args.tta_shift = config.training.tta_shift if args.tta_shift is None else args.tta_shift
        logits, labels = predict(model, loader, device, torch.bfloat16 if device.type == "cuda" else None, tta=args.tta,
                                 tta_shift=args.tta_shift)
        os.makedirs(args.output_dir, exist_ok=True)
        metrics = write_reports(args.output_dir, logits, labels, class_names, data.info, loader, args, state)
    except (UsageError, ConfigError) + USER_ERRORS as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    print_summary(metrics, class_names)
    print(f"reports written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
