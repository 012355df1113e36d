#!/usr/bin/python3
"""Fallback for `coordinator dataset import-idx` on branches that lack it: the same tree, OUT_DIR/<class>/<index>.png.

  import_idx.py IMAGES.gz LABELS.gz OUT_DIR

Fashion-MNIST class names (T-shirt_top, Trouser, ... Ankle_boot), 8-bit grayscale PNGs named by the image's
position in the IDX file, zero-padded to five digits: what IdxImporter writes. Needs python3-pil and python3-numpy.
"""
import gzip
import json
import os
import sys

import numpy as np
from PIL import Image

NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    images_file, labels_file, out = sys.argv[1:4]
    images, labels = read_idx(images_file), read_idx(labels_file)
    if len(images) != len(labels):
        sys.exit(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels")
    digits = max(5, len(str(len(images) - 1)))
    for name in NAMES:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    for index, (pixels, label) in enumerate(zip(images, labels)):
        Image.fromarray(pixels, "L").save(os.path.join(out, NAMES[label], f"{index:0{digits}d}.png"))
    print(json.dumps({"output": out, "images": len(images)}))


if __name__ == "__main__":
    main()
