"""Which checkpoint-selection rule generalises on the digits preset, judged on validation data only:
each epoch's checkpoint predicts the 216 validation images; the validation set is cut in random
halves A/B; an epoch is chosen on A (by accuracy as EarlyStopping does: the first epoch that
beats the best so far; or by the lowest loss) and scored on B."""
import glob, os, re, subprocess, sys
import torch, torch.nn.functional as F
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # the repository
sys.path.insert(0, ROOT)
from checkpoints import load_checkpoint, model_from_checkpoint
from data_pipeline import create_data_loaders
from train_vision_mamba import predict

seeds = [int(s) for s in sys.argv[1:]]
rows = {}
for seed in seeds:
    out = f"/tmp/digits_selection/run{seed}"
    if not os.path.exists(out):
        subprocess.run([sys.executable, os.path.join(ROOT, "train_vision_mamba.py"), "--seed", str(seed), "--output_dir", out, "--quiet",
                        "--set", "logging.save_every=1", "--set", "logging.keep_last=100"], check=True, capture_output=True)
    paths = sorted(glob.glob(f"{out}/checkpoints/*/checkpoint_epoch_*.pth"), key=lambda p: int(re.findall(r"(\d+)\.pth", p)[0]))
    correct, losses, data = [], [], None
    for p in paths:
        state = load_checkpoint(p)
        model, config = model_from_checkpoint(state, p)
        data = data or create_data_loaders(config, torch.device("cpu"))  # one run's epochs share its split
        logits, labels = predict(model, data.val, torch.device("cpu"))
        correct.append((logits.argmax(1) == labels).float())
        losses.append(F.cross_entropy(logits, labels, reduction="none"))
    rows[seed] = (torch.stack(correct), torch.stack(losses))  # (epochs, images)

gen = torch.Generator().manual_seed(0)
summary = {"acc_first_best": [], "loss_min": [], "last_epoch": []}
for seed, (correct, losses) in rows.items():
    n = correct.shape[1]
    per = {k: [] for k in summary}
    for _ in range(500):
        perm = torch.randperm(n, generator=gen)
        a, b = perm[: n // 2], perm[n // 2:]
        acc_a, loss_a = correct[:, a].mean(1), losses[:, a].mean(1)
        best, chosen = -1.0, 0
        for e, v in enumerate(acc_a.tolist()):
            if v > best:
                best, chosen = v, e
        per["acc_first_best"].append(correct[chosen, b].mean().item())
        per["loss_min"].append(correct[int(loss_a.argmin()), b].mean().item())
        per["last_epoch"].append(correct[-1, b].mean().item())
    line = {k: sum(v) / len(v) for k, v in per.items()}
    print(f"seed {seed}: " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in line.items()), flush=True)
    for k in summary:
        summary[k].append(line[k])
print("mean over seeds: " + "  ".join(f"{k} {100 * sum(v) / len(v):.2f}%" for k, v in summary.items()))
