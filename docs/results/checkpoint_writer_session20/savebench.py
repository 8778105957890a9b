# session 20: what a checkpoint save costs the training loop, synchronous (before) against the background writer (after)
import os, sys, time, statistics, torch
sys.path.insert(0, '.')
from types import SimpleNamespace
from config import get_preset
from train_vision_mamba import build_model, make_step_parts
from checkpoints import save_checkpoint, CheckpointWriter
dev = torch.device('cuda')
cfg = get_preset('cifar10')
model = build_model(cfg, SimpleNamespace(num_classes=10, img_size=32, in_chans=3)).to(dev)
crit, opt, scaler, ema = make_step_parts(model, cfg.training, 1e-3, dev, None)
model(torch.randn(8, 3, 32, 32, device=dev)).sum().backward(); opt.step(); ema.update_parameters(model)
state = lambda: {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}
folder = sys.argv[1]; os.makedirs(folder, exist_ok=True)
sync, blocking, total = [], [], []
for i in range(10):
    torch.cuda.synchronize(); t0 = time.perf_counter(); save_checkpoint(state(), f'{folder}/sync.pth'); sync.append(time.perf_counter() - t0)
with CheckpointWriter() as w:
    for i in range(10):
        torch.cuda.synchronize(); t0 = time.perf_counter(); w.save(state(), f'{folder}/async.pth'); blocking.append(time.perf_counter() - t0)
        w.wait(); total.append(time.perf_counter() - t0)
ms = lambda xs: f"median {1e3 * statistics.median(xs):.1f} ms (min {1e3 * min(xs):.1f}, max {1e3 * max(xs):.1f})"
print(f"checkpoint {os.path.getsize(f'{folder}/sync.pth') / 1e6:.1f} MB")
print("synchronous save_checkpoint:", ms(sync))
print("CheckpointWriter.save, the loop's wait:", ms(blocking))
print("CheckpointWriter.save until written:", ms(total))
