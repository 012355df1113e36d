#!/usr/bin/env python3
"""PyTorch 1.13 alone: fwd+bwd+SGD step of ResNet-18 (batch 32, 224, random data, 2 threads) in NCHW and in channels-last.

Shows what the memory layout is worth for training on this CPU (BENCHMARKS.md, "Training throughput"): 4 steps, best of the last 3.
"""
import torch, torchvision, time
torch.set_num_threads(2); torch.manual_seed(0)
for fmt in ["contiguous", "channels_last"]:
    m = torchvision.models.resnet18(num_classes=2)
    x = torch.randn(32, 3, 224, 224); y = torch.randint(0, 2, (32,))
    if fmt == "channels_last":
        m = m.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    ts = []
    for i in range(4):
        t = time.time(); opt.zero_grad(); l = torch.nn.functional.cross_entropy(m(x), y); l.backward(); opt.step(); ts.append(time.time() - t)
    print(fmt, [round(t, 2) for t in ts], "img/s", round(32 / min(ts[1:]), 2), "loss", float(l))
