"""Session 32's record of how the CPU training runs' peak memory was measured: the training script itself, its
memory check switched off, stopped by SIGINT after N seconds (it saves a checkpoint and exits 130), then the
process's peak resident memory printed.

    cd /tmp/run && python docs/results/session32/cpu_peak_rss.py 40 --config cifar10 --set data.dataset=imagefolder \
        --data_dir /tmp/cifar10-jpeg --batch_size 128 --set logging.progress_bar=false
"""
import atexit
import os
import resource
import signal
import sys

seconds = int(sys.argv.pop(1))
atexit.register(lambda: print(f"PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", file=sys.stderr))
signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
signal.alarm(seconds)
sys.argv = ["train_vision_mamba.py"] + sys.argv[1:]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import train_vision_mamba  # noqa: E402

train_vision_mamba.check_cpu_step_fits = lambda *args, **kwargs: None  # to measure runs the check would refuse
sys.exit(train_vision_mamba.main())
