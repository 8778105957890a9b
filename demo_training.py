"""Quick offline check of your setup (about a minute on 2 CPU cores).

    python demo_training.py [--output_dir ROOT] [--device auto|cpu|cuda]

Reports the environment, builds every model size, checks a forward/backward pass, trains a
small model on scikit-learn's digits with the real training script, evaluates it with the real
evaluation script, and prints PASS (test accuracy >= 90%) or FAIL with the reason.
Outputs go where training puts them, under the experiment name vision_mamba_demo.
"""
import argparse
import json
import os
import sys
import time

import torch

import evaluate_model
import train_vision_mamba
from vision_mamba import MODEL_SIZES, count_parameters, create_model

EXPERIMENT = "vision_mamba_demo"
REQUIRED_ACCURACY = 0.90


def report_environment(device):
    amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off (fp32 on CPU)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} | device {device} ({name}) | mixed precision {amp}")


def report_model_sizes():
    print(f"{'size':<7}{'dim':>5}{'depth':>6}{'heads':>6}{'params (32x32, 10 classes)':>29}")
    for size, spec in MODEL_SIZES.items():
        with torch.device("meta"):  # shapes only: no memory, no init time
            params = count_parameters(create_model(size))
        print(f"{size:<7}{spec.embed_dim:>5}{spec.depth:>6}{spec.num_heads:>6}{params / 1e6:>28.2f}M")


def check_forward_backward(device):
    model = create_model("tiny", num_classes=10, img_size=32, in_chans=3).to(device)
    images = torch.randn(2, 3, 32, 32, device=device)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1], device=device))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    if missing or not torch.isfinite(loss):
        raise AssertionError(f"forward/backward check failed: no finite gradient for {missing[:3]}")
    print(f"forward/backward on tiny (32x32): loss {loss.item():.3f}, all {len(list(model.parameters()))} parameter tensors have gradients")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=".")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    start = time.time()
    try:
        device = train_vision_mamba.resolve_device(args.device)
        report_environment(device)
        report_model_sizes()
        check_forward_backward(device)
        print("training on digits (8x8, 10 classes):")
        code = train_vision_mamba.main(["--config", "digits", "--experiment_name", EXPERIMENT, "--output_dir", args.output_dir,
                                        "--device", args.device, "--overwrite", "--quiet"])
        if code != 0:
            raise AssertionError(f"training exited with code {code}")
        checkpoint = os.path.join(args.output_dir, "checkpoints", EXPERIMENT, "best_model.pth")
        eval_dir = os.path.join(args.output_dir, "logs", EXPERIMENT, "evaluation")
        print("evaluating the best checkpoint:")
        code = evaluate_model.main(["--checkpoint", checkpoint, "--output_dir", eval_dir, "--device", args.device])
        if code != 0:
            raise AssertionError(f"evaluation exited with code {code}")
        with open(os.path.join(eval_dir, "metrics.json")) as f:
            accuracy = json.load(f)["accuracy"]
        if accuracy < REQUIRED_ACCURACY:
            raise AssertionError(f"test accuracy {accuracy:.4f} is below {REQUIRED_ACCURACY:.2f}")
    except Exception as e:  # the demo's job is to say what is wrong, in one line
        print(f"FAIL: {type(e).__name__}: {e} ({time.time() - start:.0f}s)")
        return 1
    print(f"PASS: digits test accuracy {accuracy:.4f} >= {REQUIRED_ACCURACY:.2f} in {time.time() - start:.0f}s; "
          f"outputs in {os.path.join(args.output_dir, 'logs', EXPERIMENT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
