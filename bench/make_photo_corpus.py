#!/usr/bin/python3
"""Writes the photo-like JPEG corpus the extraction benchmark reads (an ImageFolder tree).

  make_photo_corpus.py OUT_DIR [--per-class 1000] [--size 256] [--quality 90] [--seed 0]

Each image is a Fashion-MNIST picture (Debian's dataset-fashion-mnist, training set) upscaled to SIZE x SIZE,
colorised with a smooth random colour field on a second smooth random background, with per-pixel noise: edges,
gradients and grain that a JPEG encoder treats like a photo's (about 15-25 KB at 256x256, quality 90), not flat
colours that compress to nothing. Two classes: T-shirt_top (label 0) and Sneaker (label 7), the first PER_CLASS
images of each. Deterministic for a given seed. Needs Debian's python3-pil and python3-numpy only.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np
from PIL import Image

IDX_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = {0: "T-shirt_top", 7: "Sneaker"}


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def smooth_field(rng, size, cells, low, high):
    """A smooth RGB field: a few random colours on a coarse grid, upscaled bicubically."""
    grid = rng.uniform(low, high, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid, "RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    images = read_idx(os.path.join(IDX_DIR, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(IDX_DIR, "train-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(a.seed)
    total_bytes, count = 0, 0
    for label, name in CLASSES.items():
        folder = os.path.join(a.out, name)
        os.makedirs(folder, exist_ok=True)
        picks = np.flatnonzero(labels == label)[:a.per_class]
        if len(picks) < a.per_class:
            sys.exit(f"only {len(picks)} Fashion-MNIST images of class {name}; asked for {a.per_class}")
        for i, index in enumerate(picks):
            shape = Image.fromarray(images[index], "L").resize((a.size, a.size), Image.BICUBIC)
            mask = np.asarray(shape, dtype=np.float32)[..., None] / 255.0
            foreground = smooth_field(rng, a.size, int(rng.integers(3, 7)), 40, 255)
            background = smooth_field(rng, a.size, int(rng.integers(2, 5)), 0, 200)
            # The garment's own shading (its grey levels) modulates its colour, as light does on cloth.
            pixels = mask * foreground * (0.55 + 0.45 * mask) + (1.0 - mask) * background
            pixels += rng.normal(0.0, 7.0, size=pixels.shape)
            picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            path = os.path.join(folder, f"{i:05d}.jpg")
            picture.save(path, "JPEG", quality=a.quality)
            total_bytes += os.path.getsize(path)
            count += 1
    print(json.dumps({"images": count, "classes": list(CLASSES.values()), "size": a.size, "quality": a.quality,
                      "mean_bytes": round(total_bytes / max(count, 1))}))


if __name__ == "__main__":
    main()
