#!/usr/bin/python3
"""Training steps of PyTorch itself (Debian's python3-torch 1.13), for tests/GpuWorker.Tests/Training/SuffixTrainerTests.cs:

    /usr/bin/python3 tests/GpuWorker.Tests/Fixtures/training/make_training_fixtures.py tests/GpuWorker.Tests/Fixtures/training

torchvision's resnet18 with a 10-class fc, closed-form weights (make_feature_fixtures.py's, so no weight file is
committed), fine-tuned from layer3 on closed-form layer3 activations (4 x 256 x 14 x 14, non-negative as after a ReLU):
layer4 and fc in train mode (batch statistics, running statistics updated), cross-entropy, three steps of the
reference material's SGD with momentum (lr 0.01, momentum 0.9, weight decay 1e-4) and, from the same start, three
of AdamW (lr 1e-3, weight decay 0.01). Recorded: each step's loss, and after the steps fc's weight and bias, layer4.1.bn2's
weight and running mean, and layer4.0.conv1.weight's first two filters. And fine-tune-all from images (run_all).
"""
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from make_feature_fixtures import closed_form, fill, write_safetensors  # noqa: E402

LABELS = [3, 1, 4, 9]
RECORDED = ["fc.weight", "fc.bias", "layer4.1.bn2.weight", "layer4.1.bn2.running_mean"]


def activations():
    # closed_form's non-weight values lie in [-0.1, 0.1): scaled and rectified, like layer3's ReLU output.
    return np.maximum(closed_form("activations.layer3", (4, 256, 14, 14), False) * 20, 0).astype(np.float32)


def run(optimizer_name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    fill(model)
    model.train()
    x = torch.from_numpy(activations())
    y = torch.tensor(LABELS)
    trainable = list(model.layer4.parameters()) + list(model.fc.parameters())
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        out = model.fc(torch.flatten(model.avgpool(model.layer4(x)), 1))
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    state = model.state_dict()
    tensors = {f"{optimizer_name}.losses": np.array(losses, dtype=np.float32)}
    for key in RECORDED:
        tensors[f"{optimizer_name}.{key}"] = state[key].numpy().copy()
    tensors[f"{optimizer_name}.layer4.0.conv1.weight[:2]"] = state["layer4.0.conv1.weight"][:2].numpy().copy()
    return tensors


def run_all():
    """fine-tune-all from images (4 closed-form images at 64x64): every layer trains, the backbone at lr 0.001 and the new
    fc at 0.01 (two parameter groups), SGD momentum 0.9, weight decay 1e-4, two steps."""
    model = torchvision.models.resnet18(num_classes=10)
    fill(model)
    model.train()
    x = torch.from_numpy((closed_form("images.64", (4, 3, 64, 64), False) * 20).astype(np.float32))
    y = torch.tensor(LABELS)
    head = list(model.fc.parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    optimizer = torch.optim.SGD([{"params": backbone, "lr": 0.001}, {"params": head, "lr": 0.01}], lr=0.01, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    state = model.state_dict()
    return {
        "all.losses": np.array(losses, dtype=np.float32),
        "all.fc.weight": state["fc.weight"].numpy().copy(),
        "all.conv1.weight": state["conv1.weight"].numpy().copy(),
        "all.layer1.0.bn1.running_mean": state["layer1.0.bn1.running_mean"].numpy().copy(),
    }


def main():
    out = sys.argv[1]
    tensors = {}
    for name in ("sgd", "adamw"):
        tensors.update(run(name))
    tensors.update(run_all())
    write_safetensors(os.path.join(out, "resnet18-training-steps.safetensors"), sorted(tensors.items()),
                      {"made_by": f"make_training_fixtures.py, torch {torch.__version__}, torchvision {torchvision.__version__}",
                       "labels": ",".join(map(str, LABELS))})
    print({k: v.tolist() for k, v in tensors.items() if k.endswith("losses")})


if __name__ == "__main__":
    main()
