#!/usr/bin/env python3
"""Peer baseline for training throughput: the same training loop a PyTorch user would write.

ResNet-18 (torchvision layout, random weights: throughput does not depend on them), SGD with momentum, cross-entropy,
batch 32 at 224, on an ImageFolder tree decoded by PIL in a multi-process DataLoader (shuffled, as our trainer is).
Needs Debian's python3-torch, python3-torchvision and python3-pil (no network).

  peer_pytorch_train.py IMAGES_DIR --mode all|top [--cutoff layer3] [--size 224] [--batch 32] [--workers 2]
                        [--threads 2] [--epochs 1]

--mode all: fine-tune every layer from the images (train mode, batch norms update).
--mode top: train layer4 and fc on activations cached at layer3 (computed once first, not timed), layer1-3 frozen:
            the frozen work is not repeated, as in our fine-tune-top on the feature cache.
Prints one JSON line per epoch: {"tool": "pytorch", "mode": M, "images": N, "seconds": S, "images_per_s": R, ...}.
"""
import argparse, json, time

import torch
import torchvision
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("--mode", choices=["all", "top"], required=True)
    ap.add_argument("--cutoff", default="layer3")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    resize = int(round(a.size * 256 / 224))
    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(a.size),
                             transforms.Lambda(lambda im: im.convert("RGB")), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    data = torchvision.datasets.ImageFolder(a.images, transform=tf)
    classes = len(data.classes)
    model = torchvision.models.resnet18(num_classes=classes)
    loss_fn = torch.nn.CrossEntropyLoss()

    if a.mode == "all":
        loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, num_workers=a.workers)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        model.train()
        for epoch in range(a.epochs):
            n, t = 0, time.time()
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                n += len(y)
            dt = time.time() - t
            print(json.dumps({"tool": "pytorch", "mode": "fine-tune-all", "torch": torch.__version__, "epoch": epoch,
                              "images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)}), flush=True)
        return

    # The frozen prefix once, in eval mode without gradients (not timed: it is the extraction, cached).
    prefix = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3).eval()
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=False, num_workers=a.workers)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            feats.append(prefix(x))
            labels.append(y)
    feats, labels = torch.cat(feats), torch.cat(labels)
    for p in prefix.parameters():
        p.requires_grad = False
    top = torch.nn.Sequential(model.layer4, model.avgpool, torch.nn.Flatten(), model.fc)
    opt = torch.optim.SGD(top.parameters(), lr=1e-3, momentum=0.9)
    top.train()
    for epoch in range(a.epochs):
        order = torch.randperm(len(labels))
        n, t = 0, time.time()
        for i in range(0, len(labels), a.batch):
            idx = order[i:i + a.batch]
            opt.zero_grad()
            loss = loss_fn(top(feats[idx]), labels[idx])
            loss.backward()
            opt.step()
            n += len(idx)
        dt = time.time() - t
        print(json.dumps({"tool": "pytorch", "mode": "fine-tune-top", "cutoff": a.cutoff, "torch": torch.__version__, "epoch": epoch,
                          "images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)}), flush=True)


if __name__ == "__main__":
    main()
