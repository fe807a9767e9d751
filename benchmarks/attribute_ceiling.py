"""Can the attributes be seen at all? An independent small-CNN ceiling for the synthetic benchmark.

A plain convolutional network (no part of Finedefics) is trained from scratch to classify every
attribute of birds from the attribute pool (random attribute values, no species: the same images the
demo's vision pre-training sees), then scored on a split of a synthetic benchmark, per attribute and
on the values that set each species apart from its siblings. If it reaches ~100%, the benchmark's
attributes are visible at its image size and a model that cannot describe them is limited by its
vision stack, not by the pictures.

    python benchmarks/attribute_ceiling.py finedefics-demo/data --split validation
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from finedefics_data.synth import (
    ATTRIBUTES,
    SynthConfig,
    distinguishing_attributes,
    load_categories,
    load_metadata,
    pool_sample,
)

NAMES = list(ATTRIBUTES)


def encode(attributes: dict) -> list[int]:
    return [ATTRIBUTES[name].index(attributes[name]) if name in attributes else -100 for name in NAMES]


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


class SmallCNN(nn.Module):
    """Four conv blocks (32-128 channels), global max pooling, one linear head per attribute."""

    def __init__(self):
        super().__init__()

        def block(inputs, outputs):
            return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                                 nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128))
        self.heads = nn.ModuleList([nn.Linear(128, len(ATTRIBUTES[name])) for name in NAMES])

    def forward(self, images):
        pooled = self.features(images).amax(dim=(2, 3))
        return [head(pooled) for head in self.heads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="a synthetic benchmark folder (`finedefics data synth`)")
    parser.add_argument("--split", default="validation", help="split to score (default validation)")
    parser.add_argument("--pool", type=int, default=20000, help="pool images to train on (default 20000)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the pool (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    settings = json.loads((args.data_dir / "config.json").read_text())
    settings.pop("version", None)
    config = SynthConfig(**settings)

    start = time.time()
    samples = [pool_sample(i, config) for i in range(args.pool)]
    train_x = np.stack([np.asarray(image) for image, _, _ in samples])
    train_y = torch.tensor([encode(visible) for _, visible, _ in samples])
    categories = load_categories(args.data_dir)
    by_name = {c["name"]: c for c in categories}
    rows = load_metadata(args.data_dir, args.split)
    test_x = to_tensor(np.stack([np.asarray(Image.open(args.data_dir / args.split / r["file_name"]).convert("RGB"))
                                 for r in rows]))
    test_y = np.array([encode(json.loads(r["attributes"])) for r in rows])
    setting_apart = np.zeros_like(test_y, dtype=bool)
    for i, row in enumerate(rows):
        for name in distinguishing_attributes(by_name[row["category"]], categories):
            setting_apart[i, NAMES.index(name)] = True

    model = SmallCNN()
    batch = 64
    steps = args.epochs * (args.pool // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    model.train()
    for _ in range(args.epochs):
        order = rng.permutation(args.pool)
        for first in range(0, args.pool - batch + 1, batch):
            index = order[first:first + batch]
            outputs = model(to_tensor(train_x[index]))
            loss = sum(F.cross_entropy(out, train_y[index, j], ignore_index=-100) for j, out in enumerate(outputs))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = np.stack([out.argmax(-1).numpy() for out in model(test_x)], axis=1)
    seen = test_y >= 0
    print(f"small CNN trained on {args.pool} pool images x {args.epochs} epochs ({time.time() - start:.0f} s); "
          f"{args.split} split of {args.data_dir}, {len(rows)} images")
    for j, name in enumerate(NAMES):
        mask = seen[:, j]
        print(f"  {name:13s} {100 * (predicted[mask, j] == test_y[mask, j]).mean():5.1f}%")
    apart = seen & setting_apart
    print("  values that set a species apart from its siblings: "
          f"{100 * (predicted[apart] == test_y[apart]).mean():.1f}% ({int(apart.sum())} values)")


if __name__ == "__main__":
    main()
