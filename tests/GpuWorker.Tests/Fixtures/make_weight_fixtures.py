#!/usr/bin/python3
"""Writes the weight-file fixtures the Weights tests read, with real PyTorch.

Run with Debian's PyTorch (python3-torch, 1.13; not a pyenv python):
    /usr/bin/python3 tests/GpuWorker.Tests/Fixtures/make_weight_fixtures.py

Every .pt file is written by torch.save itself, so the tests read what PyTorch really produces. Next to each
one, a *.expected.json holds the same tensors in a format that shares nothing with the loader under test
(dtype, shape and the raw little-endian bytes in base64), so the test compares against an independent record.
The malicious files carry a payload that creates MARKER when unpickled; this script proves that plain
torch.load does run it, and the test proves our loader does not.
"""

import base64
import collections
import json
import os
import struct
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MARKER = "/tmp/cluster-weights-fixture-pwned"


class TinyConvNet(torch.nn.Module):
    """The same network as the test's TorchSharp TinyConvNet: the names become the state_dict keys."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Payload:
    """Unpickling this calls os.system: what a hostile "weights" file would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class EvalPayload:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARKER}')",))


def raw_bytes(tensor):
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16; the bits are the same when read as int16.
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def describe(tensors):
    return {
        name: {
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "shape": list(tensor.shape),
            "base64": base64.b64encode(raw_bytes(tensor)).decode("ascii"),
        }
        for name, tensor in tensors.items()
    }


def write_expected(name, tensors, **extra):
    document = {"tensors": describe(tensors)}
    document.update(extra)
    (HERE / f"{name}.expected.json").write_text(json.dumps(document, indent=1) + "\n")


SAFETENSORS_DTYPES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}


def write_safetensors_by_hand(path, tensors):
    """The safetensors layout written from its specification with struct and json only, in state_dict order
    (not sorted), so the C# reader is checked against a writer that is not its own."""
    header, offset, blobs = {}, 0, []
    for name, tensor in tensors.items():
        dtype, _ = SAFETENSORS_DTYPES[tensor.dtype]
        blob = raw_bytes(tensor)
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header["__metadata__"] = {"written_by": "make_weight_fixtures.py"}
    encoded = json.dumps(header).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for blob in blobs:
            out.write(blob)


def main():
    assert sys.byteorder == "little"
    torch.manual_seed(20261128)

    model = TinyConvNet()
    with torch.no_grad():
        model.train()
        for _ in range(2):  # non-trivial running statistics, num_batches_tracked == 2
            model(torch.randn(4, 3, 5, 5))
        model.eval()
        sample = torch.randn(2, 3, 5, 5)
        output = model(sample)

    state = model.state_dict()
    torch.save(state, HERE / "tiny_convnet.pt")
    write_expected(
        "tiny_convnet",
        state,
        input=describe({"x": sample})["x"],
        output=describe({"y": output})["y"],
    )
    write_safetensors_by_hand(HERE / "tiny_convnet.safetensors", state)

    # Views into shared storages (offset, strides, a transpose) and every dtype the loader maps.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {
        "base": base,
        "rows_1_to_3_every_other_column": base[1:, ::2],
        "transposed": base.t(),
        "row_2": base[2],
        "float16": torch.linspace(-2, 2, 7).to(torch.float16),
        "bfloat16": torch.linspace(-3, 3, 5).to(torch.bfloat16),
        "float64": torch.tensor([1.0 / 3.0, -2.5e300], dtype=torch.float64),
        "int64": torch.tensor([-(2**40), 7], dtype=torch.int64),
        "int32": torch.tensor([[-5, 6], [7, -8]], dtype=torch.int32),
        "int16": torch.tensor([-300, 300], dtype=torch.int16),
        "int8": torch.tensor([-100, 100], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        # Pickled through torch._utils._rebuild_parameter, as in checkpoints that hold whole parameters.
        "parameter": torch.nn.Parameter(torch.tensor([0.5, -0.25])),
    }
    torch.save(views, HERE / "views_and_dtypes.pt")
    write_expected("views_and_dtypes", views)

    # A training checkpoint as people save them: the weights nested under "state_dict", with DataParallel's
    # "module." prefix, beside an optimizer state and plain values (floats, None, booleans, a big integer).
    parallel = torch.nn.DataParallel(model)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.1, momentum=0.9)
    checkpoint = {
        "epoch": 3,
        "best_accuracy": 0.75,
        "arch": "tiny_convnet",
        "state_dict": parallel.state_dict(),
        "optimizer": optimizer.state_dict(),
        "note": None,
        "flags": [True, False],
        "seen_images": 2**70,
        "offset": -5,
        "window": (1, 2, 3, 4),
    }
    torch.save(checkpoint, HERE / "checkpoint_dataparallel.pt")

    # The format torch.save wrote before PyTorch 1.6: refused with a pointer to re-save it.
    torch.save(state, HERE / "legacy_format.pt", _use_new_zipfile_serialization=False)

    # Hostile files: a real tensor next to an object whose unpickling runs a command.
    torch.save({"conv1.weight": state["conv1.weight"], "payload": Payload(f"touch {MARKER}")}, HERE / "malicious_system.pt")
    torch.save({"payload": EvalPayload()}, HERE / "malicious_eval.pt")
    for name in ("malicious_system.pt", "malicious_eval.pt"):
        if os.path.exists(MARKER):
            os.remove(MARKER)
        torch.load(HERE / name)  # plain unpickling runs the payload...
        assert os.path.exists(MARKER), f"{name}: the payload did not run under torch.load"
        os.remove(MARKER)  # ...which is exactly what the C# loader must never do.

    for path in sorted(HERE.iterdir()):
        if path.suffix != ".py":
            assert path.stat().st_size < 200_000, f"{path.name} is too big to commit as a fixture"
            print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
