"""A small fine-grained car dataset in the reference implementation's format, drawn with PIL.

    python tests/reference_format.py OUT [--train N] [--test N]

writes
    OUT/images/<i>.png    64x64 training drawings of five invented car models
    OUT/pretrain.csv      stage I rows: "describe the car" -> its attribute description, category, hard negatives
    OUT/finetune.csv      stage II rows WITHOUT a category: open-set and multiple-choice recognition questions
                          (answers: a name, or a letter) and a few instruction rows (colour questions)
    OUT/test/             the test split as an imagefolder (<i>.png + metadata.jsonl: file_name, category)
    OUT/test_options.json FOCI-format 4-way options for the test split (image paths relative to OUT)

The models differ in body colour, roof and wheels; siblings share all but one attribute, and one model
("Ostra Vela") is rare: a third of the training images of the others. Used by the tests and by
docs/your-own-data.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

NOUN = "car"
MODELS = {  # name -> (body colour, roof, wheel radius)
    "Corvane Sprite": ("red", "flat", 6),
    "Corvane Sprite GT": ("red", "curved", 6),
    "Halden Mistral": ("blue", "flat", 8),
    "Halden Rook": ("blue", "curved", 8),
    "Ostra Vela": ("green", "curved", 6),
}
RARE = "Ostra Vela"
COLUMNS = ("question", "answer", "type", "image_path", "image_path_1", "image_path_2", "attribute", "neg_attribute",
           "category", "neg_category")
SEPARATOR = "\t\n"  # the reference's separator of several negatives in one cell
DESCRIBE = "Describe the attributes of the car in the picture."  # not the trainer's wording, on purpose
OPEN_SET = "Which car model is this?"
MULTIPLE_CHOICE = "Which of these cars is shown in the image?"


def describe(name: str) -> str:
    colour, roof, wheel = MODELS[name]
    return f"a {colour} car with a {roof} roof and {'large' if wheel > 6 else 'small'} wheels."


def negatives(name: str) -> list[str]:
    """The other models, most similar first (shared attributes), ties by name."""
    def shared(other):
        return sum(a == b for a, b in zip(MODELS[name], MODELS[other]))
    return sorted((m for m in MODELS if m != name), key=lambda m: (-shared(m), m))[:3]


def draw(name: str, rng: random.Random) -> Image.Image:
    colour, roof, wheel = MODELS[name]
    image = Image.new("RGB", (64, 64), (235, 235, 225))
    pen = ImageDraw.Draw(image)
    dx, dy = rng.randint(-4, 4), rng.randint(-3, 3)
    pen.rectangle([8 + dx, 30 + dy, 56 + dx, 44 + dy], fill=colour)
    if roof == "flat":
        pen.rectangle([18 + dx, 20 + dy, 46 + dx, 30 + dy], fill=colour)
    else:
        pen.pieslice([16 + dx, 12 + dy, 48 + dx, 44 + dy], 180, 360, fill=colour)
    for x in (18, 46):
        pen.ellipse([x + dx - wheel, 44 + dy - wheel, x + dx + wheel, 44 + dy + wheel], fill="black")
    return image


def write_reference_dataset(root: str | Path, train_per_model: int = 6, test_per_model: int = 3,
                            seed: int = 0) -> Path:
    """Write the dataset described in the module docstring into ``root``; returns ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    train = _draw_split(root / "images", {m: max(1, train_per_model // 3) if m == RARE else train_per_model
                                          for m in MODELS}, rng)
    test = _draw_split(root / "test", {m: test_per_model for m in MODELS}, rng)
    _write_csv(root / "pretrain.csv", [_pretrain_row(path, name) for path, name in train])
    finetune = [row for index, (path, name) in enumerate(train) for row in _finetune_rows(path, name, index)]
    _write_csv(root / "finetune.csv", finetune)
    (root / "test" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": path, "category": name}) + "\n" for path, name in test))
    options: dict[str, list] = {}
    for path, name in test:
        options.setdefault(name, []).append({"image": f"test/{path}", "options": [name, *negatives(name)],
                                             "groundtruth": name})
    (root / "test_options.json").write_text(json.dumps(options, indent=1))
    return root


def _draw_split(folder: Path, counts: dict[str, int], rng: random.Random) -> list[tuple[str, str]]:
    """Draw ``counts[name]`` images of each model into ``folder``; (file name, model) per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, count in counts.items():
        for _ in range(count):
            path = f"{len(rows)}.png"
            draw(name, rng).save(folder / path)
            rows.append((path, name))
    return rows


def _pretrain_row(path: str, name: str) -> dict:
    negs = negatives(name)
    return {"question": DESCRIBE, "answer": describe(name), "type": "single-image", "image_path": path,
            "attribute": describe(name), "neg_attribute": SEPARATOR.join(describe(n) for n in negs),
            "category": name, "neg_category": SEPARATOR.join(negs)}


def _finetune_rows(path: str, name: str, index: int) -> list[dict]:
    options = [name, *negatives(name)]
    random.Random(index).shuffle(options)
    choices = "\n".join(f"{'ABCD'[i]}. {option}" for i, option in enumerate(options))
    multiple_choice = (f"{MULTIPLE_CHOICE}\nChoices:\n{choices}\n"
                       "Answer with the letter from the given choices directly.")
    rows = [{"question": OPEN_SET, "answer": name, "type": "single-image", "image_path": path},
            {"question": multiple_choice, "answer": "ABCD"[options.index(name)], "type": "single-image",
             "image_path": path}]
    if index % 5 == 0:  # a few instruction rows: not recognition questions
        rows.append({"question": "What colour is the car's body?", "answer": MODELS[name][0], "type": "single-image",
                     "image_path": path})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--train", type=int, default=6, help="training images per model (the rare one gets a third)")
    parser.add_argument("--test", type=int, default=3, help="test images per model")
    arguments = parser.parse_args()
    print(f"written: {write_reference_dataset(arguments.output, arguments.train, arguments.test)}")
