"""Train one configuration over several seeds, side by side on the GPUs given, and report the
mean and spread: how the accuracy tables of docs/RESULTS.md are made.

    python benchmarks/run_seeds.py --config cifar10 --seeds 1 2 3 --gpus 0 1 2 --output_dir runs/cifar10 \\
        -- --set data.dataset=imagefolder --data_dir /data/cifar10-jpeg
    python benchmarks/run_seeds.py --config digits --seeds 1 2 3 --output_dir runs/digits      # CPU, one at a time

Each seed is one `train_vision_mamba.py` process (`--config C --seed S --quiet --output_dir
OUT/seedS`, then everything after `--`), its console output in OUT/seedS.txt. With --gpus each
process sees one GPU (CUDA_VISIBLE_DEVICES), --per_gpu of them at a time; without, --jobs
processes share the machine. Runs that overlapped another on the same device are marked: their img/s and wall times
are not those of a run alone. Afterwards a table per seed (test accuracy and macro-F1, best epoch
and its validation accuracy, median training img/s, wall time of the whole command, exit code),
the mean and sample standard deviation of the test accuracy over the runs that finished, and
OUT/summary.json with all of it. Exit code 0 when every run finished, 1 otherwise; 2, with the
training script's one-line error and before anything starts, when it refuses the configuration.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from checkpoints import atomic_write  # noqa: E402
from data_pipeline import error_line  # noqa: E402
from train_vision_mamba import USER_ERRORS, UsageError, prepare  # noqa: E402
TRAIN_SCRIPT = os.path.join(ROOT, "train_vision_mamba.py")


def config_problem(args):
    """The training script's own error line for a configuration it refuses (None if it takes it):
    its prepare() checks, as for --print_config, everything that can be checked before a run writes anything."""
    first_run_dir = os.path.join(args.output_dir, f"seed{args.seeds[0]}")
    try:
        prepare(["--config", args.config, "--output_dir", first_run_dir, "--print_config", *args.train_args])
    except (UsageError,) + USER_ERRORS as e:
        return f"error: {error_line(e)}"
    return None


def start_run(args, seed, gpu):
    run_dir = os.path.join(args.output_dir, f"seed{seed}")
    command = [sys.executable, TRAIN_SCRIPT, "--config", args.config, "--seed", str(seed), "--quiet",
               "--output_dir", run_dir, *args.train_args]
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    console = open(run_dir + ".txt", "w")
    # the caller's working directory: relative --output_dir and --data_dir mean what they meant to the caller
    process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env)
    return {"seed": seed, "gpu": gpu, "process": process, "console": console, "start": time.monotonic(), "dir": run_dir}


def run_all(args):
    """Run every seed, at most one per slot at a time; returns the finished runs in seed order."""
    slots = [gpu for gpu in args.gpus for _ in range(args.per_gpu)] if args.gpus else [None] * args.jobs  # GPU or None
    pending, running, done = list(args.seeds), {}, []
    try:
        while pending or running:
            for slot, gpu in enumerate(slots):
                if slot not in running and pending:
                    running[slot] = start_run(args, pending.pop(0), gpu)
            time.sleep(0.2)
            for slot, run in list(running.items()):
                if run["process"].poll() is not None:
                    run["end"] = time.monotonic()
                    run["wall_s"] = run["end"] - run["start"]
                    run["console"].close()
                    done.append(running.pop(slot))
    except KeyboardInterrupt:
        for run in running.values():
            run["process"].terminate()  # each run saves a resumable checkpoint on SIGTERM
        for run in running.values():
            run["process"].wait()
        raise
    return sorted(done, key=lambda run: run["seed"])


def shared_device(run, runs):
    """Whether another run was on the same device (GPU, or the machine without --gpus) at some moment."""
    return any(other is not run and other["gpu"] == run["gpu"] and other["start"] < run["end"] and run["start"] < other["end"]
               for other in runs)


def summarize(args, runs):
    rows = []
    for run in runs:
        row = {"seed": run["seed"], "gpu": run["gpu"], "exit_code": run["process"].returncode,
               "wall_s": round(run["wall_s"], 1), "shared_device": shared_device(run, runs)}
        logs = glob.glob(os.path.join(run["dir"], "logs", "*", "training_log.json"))
        if run["process"].returncode == 0 and logs:
            with open(logs[0]) as f:
                log = json.load(f)
            row.update(test_acc=log["test_acc"], test_macro_f1=log.get("test_macro_f1"), best_epoch=log["best_epoch"],
                       best_val=log["best_val"], epochs=len(log["epochs"]),
                       median_img_per_s=round(statistics.median(e["img_per_s"] for e in log["epochs"])))
        rows.append(row)
    accuracies = [row["test_acc"] for row in rows if "test_acc" in row]
    return {"config": args.config, "train_args": args.train_args, "runs": rows, "finished": len(accuracies),
            "test_acc_mean": statistics.mean(accuracies) if accuracies else None,
            "test_acc_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None}


def print_table(summary):
    print(f"{'seed':>5} {'test acc':>9} {'macro-F1':>9} {'best ep':>8} {'best val':>9} {'img/s':>8} {'wall s':>8}  exit")
    for row in summary["runs"]:
        if "test_acc" in row:
            print(f"{row['seed']:>5} {row['test_acc']:>9.2%} {row['test_macro_f1']:>9.3f} {row['best_epoch']:>8} "
                  f"{row['best_val']:>9.2%} {row['median_img_per_s']:>8} {row['wall_s']:>8.0f}  {row['exit_code']}")
        else:
            print(f"{row['seed']:>5} {'-':>9} {'-':>9} {'-':>8} {'-':>9} {'-':>8} {row['wall_s']:>8.0f}  {row['exit_code']}"
                  f"  (see seed{row['seed']}.txt)")
    mean, std = summary["test_acc_mean"], summary["test_acc_std"]
    if mean is not None:
        spread = f" ± {std:.2%}" if std is not None else " (one run: no spread)"
        print(f"test accuracy over {summary['finished']} run(s): {mean:.2%}{spread}")
    shared = [str(row["seed"]) for row in summary["runs"] if row["shared_device"]]
    if shared:
        print(f"seed(s) {', '.join(shared)} shared a device with another run: their img/s and wall times are not those of a run alone")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digits", help="preset name or JSON file, as train_vision_mamba.py takes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--gpus", nargs="*", default=[], help="GPU indices to spread the runs over (none: no pinning)")
    parser.add_argument("--per_gpu", type=int, default=1, help="runs at a time on each GPU")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time without --gpus")
    parser.add_argument("--output_dir", required=True, help="OUT: each seed writes under OUT/seedS")
    args = parser.parse_args(own)
    args.train_args = train_args
    if args.per_gpu < 1 or args.jobs < 1:
        parser.error("--per_gpu and --jobs must be at least 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has a repeated seed: {args.seeds}")
    problem = config_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=args.output_dir).close()
    except OSError as e:
        print(f"error: cannot write to --output_dir {args.output_dir!r} ({e.strerror}); choose a writable folder",
              file=sys.stderr)
        return 2
    summary = summarize(args, run_all(args))
    atomic_write(os.path.join(args.output_dir, "summary.json"), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    print_table(summary)
    return 0 if summary["finished"] == len(args.seeds) else 1


if __name__ == "__main__":
    sys.exit(main())
