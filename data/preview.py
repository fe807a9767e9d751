"""A contact sheet of a synthetic benchmark, so a person can see what the task is.

Each row shows one category: a few of its training images (enlarged), its name, genus, whether it
is rare, what sets it apart from its siblings, and its description. Whole genera are shown
together, so the one- or two-attribute differences between siblings are visible side by side.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .synth import load_categories, load_metadata

BACKGROUND = (250, 250, 247)
INK = (30, 30, 30)
MUTED = (105, 105, 105)
ACCENT = (170, 40, 40)


def write_preview(data_dir: str | Path, path: str | Path, num_genera: int = 2, images_per_category: int = 4,
                  scale: int = 2) -> Path:
    """Write a PNG contact sheet of ``num_genera`` genera of the benchmark in ``data_dir`` to ``path``."""
    data_dir, path = Path(data_dir), Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"preview path must end in .png, got {path}")
    categories = load_categories(data_dir)
    chosen = _categories_to_show(categories, num_genera)
    files = _image_files(data_dir, chosen, images_per_category)
    font, small = _font(15), _font(13)
    with Image.open(files[chosen[0]["name"]][0]) as first:
        tile = first.width * scale
    text_width, row_height = 620, tile + 14
    sheet = Image.new("RGB", (images_per_category * (tile + 4) + text_width + 16, 44 + row_height * len(chosen)),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 10), f"Synthetic fine-grained birds: {len(categories)} species in "
                        f"{len({c['genus'] for c in categories})} genera; siblings differ in one or two attributes",
              fill=INK, font=font)
    for row, category in enumerate(chosen):
        top = 40 + row * row_height
        for column, file in enumerate(files[category["name"]]):
            with Image.open(file) as image:
                sheet.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (8 + column * (tile + 4), top))
        _caption(draw, category, categories, (16 + images_per_category * (tile + 4), top), text_width, font, small)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _categories_to_show(categories: list[dict], num_genera: int) -> list[dict]:
    genera = list(dict.fromkeys(c["genus"] for c in categories))[:max(1, num_genera)]
    return sorted((c for c in categories if c["genus"] in genera), key=lambda c: (genera.index(c["genus"]), c["name"]))


def _image_files(data_dir: Path, categories: list[dict], count: int) -> dict[str, list[Path]]:
    rows = load_metadata(data_dir, "train")
    files = {c["name"]: [] for c in categories}
    for row in rows:
        if row["category"] in files and len(files[row["category"]]) < count:
            files[row["category"]].append(data_dir / "train" / row["file_name"])
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise ValueError(f"{data_dir}: category {empty[0]!r} has no training images to show")
    return files


def distinguishing_attributes(category: dict, categories: list[dict]) -> dict[str, str]:
    """The category's attribute values that differ from the most common value in its genus."""
    genus = [c for c in categories if c["genus"] == category["genus"]]
    result = {}
    for name, value in category["attributes"].items():
        common, _ = Counter(c["attributes"].get(name) for c in genus).most_common(1)[0]
        if value != common:
            result[name] = value
    return result


def _caption(draw, category, categories, origin, width, font, small) -> None:
    x, y = origin
    rare = "  RARE (few training images)" if category["is_rare"] else ""
    draw.text((x, y), category["name"], fill=INK, font=font)
    draw.text((x + draw.textlength(category["name"], font=font) + 8, y + 2), f"genus {category['genus']}{rare}",
              fill=ACCENT if rare else MUTED, font=small)
    special = distinguishing_attributes(category, categories)
    marks = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in special.items()) or "the genus's type species"
    draw.text((x, y + 20), f"sets it apart: {marks}", fill=ACCENT, font=small)
    for i, line in enumerate(textwrap.wrap(category["description"], width=width // 7)[:4]):
        draw.text((x, y + 38 + 15 * i), line, fill=INK, font=small)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()
