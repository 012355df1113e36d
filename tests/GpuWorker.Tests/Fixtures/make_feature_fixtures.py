#!/usr/bin/python3
"""Writes the PyTorch feature fixtures the kernel tests compare against (tests/GpuWorker.Tests/Kernels).

Run with Debian's PyTorch (python3-torch 1.13, python3-torchvision 0.14, python3-pil; not a pyenv python):
    /usr/bin/python3 tests/GpuWorker.Tests/Fixtures/make_feature_fixtures.py

For one model of each family, torchvision's own definition gets closed-form weights (no RNG: the C# test
computes the same float32 values from the same formula and checks their SHA-256 against the one recorded here),
PIL decodes two PNG photos and torchvision's transforms prepare them (Resize, CenterCrop, ToTensor, Normalize),
and PyTorch's forward pass gives the activations at each stage tap. Each tap is stored as its per-channel spatial
mean and maximum ([images, channels]; the global pool as is), which keeps the files small and still moves when
any part of a feature map is wrong. The script refuses to write a fixture whose float32 features disagree with
PyTorch's own float64 run, so a fixture made on a CPU with broken kernels cannot pass as the truth.
"""

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

HERE = Path(__file__).resolve().parent
OUT = HERE / "features"
IMAGES = ["cat.png", "rocket.png"]
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "AuxLogits.")

# (name in the cluster's catalog, torchvision constructor, input size, taps as torchvision module paths)
MODELS = [
    ("resnet18", lambda: torchvision.models.resnet18(), 224, ["maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]),
    ("resnet50", lambda: torchvision.models.resnet50(), 224, ["maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]),
    ("vgg11_bn", lambda: torchvision.models.vgg11_bn(), 224, ["features.3", "features.7", "features.14", "features.21", "features.28", "avgpool"]),
    ("alexnet", lambda: torchvision.models.alexnet(), 224, ["features.2", "features.5", "features.12", "avgpool"]),
    ("inception_v3", lambda: torchvision.models.inception_v3(init_weights=False, aux_logits=True), 299,
     ["maxpool2", "Mixed_5d", "Mixed_6e", "Mixed_7c", "avgpool"]),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), 224, ["features.3", "features.6", "features.13", "features.18", "avgpool"]),
    ("mobilenet_v3_large", lambda: torchvision.models.mobilenet_v3_large(), 224, ["features.3", "features.6", "features.12", "features.16", "avgpool"]),
]


def fnv1a(text):
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def closed_form(name, shape, is_batch_norm):
    """u in [0, 1) from the element index and the name; then scaled by what the tensor is. Exact in float64."""
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(fnv1a(name))) % np.uint64(2 ** 32)).astype(np.float64) / 2.0 ** 32
    leaf = name.rsplit(".", 1)[-1]
    if is_batch_norm:
        values = {"weight": 0.5 + u, "bias": (2 * u - 1) * 0.1, "running_mean": (2 * u - 1) * 0.2, "running_var": 0.5 + u}[leaf]
    elif leaf == "weight" and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        values = (2 * u - 1) * math.sqrt(6.0 / fan_in)
    else:
        values = (2 * u - 1) * 0.1
    return values.astype(np.float32).reshape(shape)


def fill(model):
    """Closed-form weights; the SHA-256 of the float32 bytes of the feature path's tensors, in key order."""
    state = model.state_dict()
    batch_norms = {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}
    digest = hashlib.sha256()
    with torch.no_grad():
        for key in sorted(state):
            tensor = state[key]
            if key.endswith(".num_batches_tracked"):
                tensor.zero_()
                continue
            values = closed_form(key, tuple(tensor.shape), key.rsplit(".", 1)[0] in batch_norms)
            tensor.copy_(torch.from_numpy(values))
            if not key.startswith(CLASSIFIER_PREFIXES):
                digest.update(values.tobytes())
    return digest.hexdigest()


def images(size):
    resize_to = round(size * 256 / 224)
    prepare = transforms.Compose([
        transforms.Resize(resize_to),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    return torch.stack([prepare(Image.open(HERE / "images" / name).convert("RGB")) for name in IMAGES])


def taps_of(model, batch, taps):
    modules = dict(model.named_modules())
    captured = {}
    hooks = []
    for tap in taps:
        module = modules.get(tap)
        if module is None:
            continue
        hooks.append(module.register_forward_hook(lambda m, i, o, tap=tap: captured.__setitem__(tap, o.detach().clone())))
    with torch.no_grad():
        model(batch)
        if "avgpool" in taps and "avgpool" not in captured:
            # MobileNet v2 pools in its forward with no module: the pool of the last feature map.
            captured["avgpool"] = torch.nn.functional.adaptive_avg_pool2d(captured[taps[-2]], 1)
    for hook in hooks:
        hook.remove()
    return captured


def statistics(activation):
    if activation.dim() == 4 and activation.shape[2] * activation.shape[3] > 1:
        return activation.mean(dim=(2, 3)), activation.amax(dim=(2, 3))
    flat = activation.flatten(1)
    return flat, flat


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, array in tensors:
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * ((8 - len(encoded) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def main():
    torch.set_grad_enabled(False)
    OUT.mkdir(exist_ok=True)
    for name, build, size, taps in MODELS:
        model = build().eval()
        sha256 = fill(model)
        batch = images(size)
        ours = taps_of(model, batch, taps)
        reference = taps_of(model.double(), batch.double(), taps)
        tensors = []
        for tap in taps:
            error = ((ours[tap].double() - reference[tap]).abs().max() / reference[tap].abs().max()).item()
            if not error < 1e-4:
                raise SystemExit(f"{name} at {tap}: PyTorch's float32 features are off its float64 ones by {error:.3g}; not a fixture")
            mean, maximum = statistics(ours[tap])
            tensors += [(f"{tap}.mean", mean.numpy()), (f"{tap}.max", maximum.numpy())]
        write_safetensors(OUT / f"{name}.safetensors", tensors, {
            "architecture": name,
            "weights_sha256": sha256,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "images": ",".join(IMAGES),
            "taps": ",".join(taps),
            "input_size": str(size),
        })
        print(f"{name}: {len(taps)} taps, weights sha256 {sha256[:16]}")


if __name__ == "__main__":
    main()
