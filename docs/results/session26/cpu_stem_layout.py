# The channels-last stem on the CPU: the cifar10 preset's tiny model, batch 64, forward + backward, NCHW and
# channels-last interleaved 5 times; then the stem alone. Run: PYTHONPATH=. python docs/results/session26/cpu_stem_layout.py
import time, torch, vision_mamba as vm
from config import get_preset
torch.manual_seed(0); torch.set_num_threads(2)
m = get_preset("cifar10").model
model = vm.create_model(m.model_size, stem=m.stem, mlp_conv=m.mlp_conv, ssm_conv=m.ssm_conv, block_type=m.block_type)
x = torch.randn(64, 3, 32, 32)
cl_forward = vm.PatchEmbed.forward
nchw_forward = lambda self, x: self.proj(self.stem(x)).flatten(2).transpose(1, 2)
def set_layout(cl):
    model.patch_embed.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    vm.PatchEmbed.forward = cl_forward if cl else nchw_forward
def step():
    t = time.perf_counter(); model(x).sum().backward(); return time.perf_counter() - t
res = {True: [], False: []}
step()
for i in range(5):
    for cl in (False, True):
        set_layout(cl); step(); res[cl].append(step())
for cl in (False, True):
    print("channels_last" if cl else "NCHW", ["%.3f" % t for t in sorted(res[cl])])
# the stem alone
stem_x = torch.randn(64, 3, 32, 32)
for cl in (False, True):
    set_layout(cl)
    ts = []
    for i in range(5):
        t = time.perf_counter(); model.patch_embed(stem_x).sum().backward(); ts.append(time.perf_counter() - t)
    print("stem only", "channels_last" if cl else "NCHW", ["%.3f" % t for t in sorted(ts)])
