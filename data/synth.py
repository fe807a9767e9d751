"""An embedded synthetic fine-grained benchmark: stylised birds drawn procedurally, CUB-200 in miniature.

Why it exists: nothing can be downloaded in an offline or CI setting, yet the Finedefics recipe needs
images with attribute descriptions, category names and hard negatives. This generator builds a
task with the structure that makes fine-grained recognition hard:

- A category (species) is a fixed combination of nine visible attributes (build, plumage colour,
  wing colour and pattern, breast colour, beak, tail, crest, eye ring). Categories come in groups
  (genera) whose members share all but one attribute with the genus's type species, so two siblings
  differ in exactly one or two attributes (e.g. the tail shape, or the eye ring).
- Names are invented ("Velmoran Reedhopper"): they do not spell out the attributes, so the
  name <-> appearance link has to be learned, which is the misalignment Finedefics addresses.
- Images vary within a category: pose (facing side, rotation), scale, position, background colour
  and clutter, colour jitter, noise, and occasional occlusion of one part; the image's description
  then omits the hidden attribute.
- Each image has a one-sentence attribute description (several templates), its structured
  attribute values, and hard negatives (siblings first) with their descriptions.
- A long tail: ``rare_fraction`` of the categories get only ``rare_train_per_category`` training
  images, so accuracy on rare categories can be measured.

Everything is deterministic for a seed: each image is drawn from its own random stream keyed by
``(seed, split, label, index)``. Images are drawn with PIL at the final size (polygons only) and
noised with numpy, so generation runs at hundreds of images per second on one core.

Folder layout written by :func:`generate_benchmark`::

    DIR/train/*.png + metadata.jsonl     datasets.load_dataset("imagefolder", data_dir=DIR)
    DIR/test/*.png  + metadata.jsonl
    DIR/categories.json                  one entry per category (attributes, description, siblings, ...)
    DIR/foci_test.json                   the test split as FOCI 4-way options
    DIR/train_reference.csv              the train split in the reference implementation's CSV format
    DIR/README.md                        what the benchmark is, with its numbers
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .prompts import (
    CHOICE_LETTERS, ObjectNoun, describe_instruction, multiple_choice_prompt, multiple_choice_query, open_set_question,
)

from .negatives import build_option_sets, mine_by_attributes, negative_descriptions
from .schema import NEGATIVE_SEPARATOR, read_jsonl, read_text, validate_record

logger = logging.getLogger(__name__)

BENCHMARK_VERSION = 2  # 2: a validation split
NOUN = "bird"

# ----------------------------------------------------------------------------- vocabulary
# Attribute -> values. Every value word appears in the descriptions (see `attribute_phrase`).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "build": ("plump", "slender"),
    "plumage": ("red", "orange", "yellow", "green", "blue", "brown", "grey"),
    "wing_color": ("black", "white", "grey", "brown", "yellow", "blue"),
    "wing_pattern": ("plain", "barred", "spotted"),
    "breast": ("white", "yellow", "red", "black"),
    "beak": ("short", "long", "hooked"),
    "tail": ("pointed", "forked", "fanned"),
    "crest": ("crested", "smooth"),
    "eye": ("ringed", "dark"),
}
# Siblings differ from their genus's type species in one of these part-level attributes; build and
# plumage stay fixed within a genus, as body shape and overall colour do within a real genus.
SPECIES_ATTRIBUTES = ("wing_color", "wing_pattern", "breast", "beak", "tail", "crest", "eye")
# Parts that a foreground leaf may hide (the description then leaves them out).
OCCLUDABLE = ("breast", "beak", "tail", "crest", "eye")

COLOURS = {
    "red": (200, 40, 40), "orange": (238, 132, 30), "yellow": (236, 208, 52), "green": (58, 152, 66),
    "blue": (48, 88, 206), "brown": (126, 82, 44), "grey": (138, 138, 138), "black": (32, 32, 32),
    "white": (240, 240, 240),
}

# Invented names: syllables chosen so that no name contains an attribute word.
_EPITHET_HEADS = ("Vel", "Ash", "Cor", "Mir", "Tal", "Bren", "Dun", "Fal", "Gor", "Hal", "Isk", "Jor", "Kes", "Lun",
                  "Nor", "Ost", "Pel", "Quen", "Ros", "Sil", "Tor", "Ul", "Vor", "Wen", "Yar", "Zel", "Em", "Ard")
_EPITHET_MIDDLES = ("mo", "ca", "ri", "ve", "la", "do", "ne", "si", "tu", "mi", "o", "e")
_EPITHET_TAILS = ("ran", "mbe", "nth", "vel", "ric", "dor", "lis", "nor", "wyn", "sk", "th", "mar", "gan", "din")
_GENUS_STEMS = ("Thistle", "Reed", "Moss", "Bramble", "Fen", "Heath", "Sedge", "Cinder", "Marsh", "Brook", "Alder",
                "Cress", "Furze", "Willow", "Hazel", "Rush", "Clover", "Bracken", "Aspen", "Tansy")
_GENUS_SUFFIXES = ("hopper", "finch", "warbler", "piper", "dart", "shrike", "lark", "thrush", "wren", "flit",
                   "runner", "creeper")
_BANNED_IN_NAMES = tuple(sorted({w for values in ATTRIBUTES.values() for w in values} | {
    "wing", "crest", "beak", "tail", "ring", "eye", "breast", "bar", "spot", "hook", "fork", "fan", "point",
    "gray", "plum", "long", "short"}))


@dataclass
class SynthConfig:
    """Size and difficulty of the synthetic benchmark. Defaults suit a CPU demo that trains in minutes.

    Args:
        num_genera: groups of similar categories (each genus has its own plumage colour while colours last).
        species_per_genus: categories per genus; siblings differ in one or two attributes.
        train_per_category: training images of a common category.
        rare_fraction: share of categories that are rare (few training images).
        rare_train_per_category: training images of a rare category.
        test_per_category: test images of every category (rare ones included).
        validation_per_category: validation images of every category, drawn like the training images from
            streams of their own, for choosing settings without looking at the test split (0: none).
        image_size: width = height in pixels.
        seed: everything (names, attributes, images) follows from it.
        num_negatives: hard negatives per record (siblings first).
        occlusion_prob: chance that one part of an image is hidden by a leaf.
        noise_std: range of the per-image Gaussian pixel noise (standard deviation, 0-255 scale).
        clutter: draw background twigs and leaves.
    """

    num_genera: int = 7
    species_per_genus: int = 4
    train_per_category: int = 32
    rare_fraction: float = 0.25
    rare_train_per_category: int = 4
    test_per_category: int = 40
    validation_per_category: int = 10
    image_size: int = 64
    seed: int = 0
    num_negatives: int = 3
    occlusion_prob: float = 0.15
    noise_std: tuple[float, float] = (2.0, 8.0)
    clutter: bool = True

    def __post_init__(self):
        self.noise_std = tuple(self.noise_std)
        # One sibling per changed (attribute, value); wing and breast colours lose one more value to the plumage.
        max_species = 1 + sum(len(ATTRIBUTES[a]) - 1 for a in SPECIES_ATTRIBUTES) - 2
        checks = [
            (1 <= self.num_genera <= len(_GENUS_STEMS) * len(_GENUS_SUFFIXES), f"num_genera must be 1..{len(_GENUS_STEMS) * len(_GENUS_SUFFIXES)}"),
            (2 <= self.species_per_genus <= max_species, f"species_per_genus must be 2..{max_species} (siblings are needed as hard negatives)"),
            (self.train_per_category >= 1 and self.test_per_category >= 1, "train_per_category and test_per_category must be >= 1"),
            (self.validation_per_category >= 0, "validation_per_category must be >= 0"),
            (0.0 <= self.rare_fraction < 1.0, "rare_fraction must be in [0, 1)"),
            (1 <= self.rare_train_per_category <= self.train_per_category, "rare_train_per_category must be 1..train_per_category"),
            (32 <= self.image_size <= 1024, "image_size must be 32..1024"),
            (1 <= self.num_negatives < self.num_categories, "num_negatives must be 1..(number of categories - 1)"),
            (0.0 <= self.occlusion_prob <= 1.0, "occlusion_prob must be in [0, 1]"),
            (len(self.noise_std) == 2 and 0 <= self.noise_std[0] <= self.noise_std[1], "noise_std must be (low, high) with 0 <= low <= high"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {message}")

    @property
    def num_categories(self) -> int:
        return self.num_genera * self.species_per_genus

    @property
    def num_rare(self) -> int:
        return int(round(self.rare_fraction * self.num_categories))


# ----------------------------------------------------------------------------- categories
def attribute_phrase(name: str, value: str) -> str:
    """The words a description uses for one attribute value (the value word always appears)."""
    phrases = {
        "plumage": f"{value} plumage",
        "breast": f"a {value} breast",
        "beak": {"short": "a short conical beak", "long": "a long thin beak", "hooked": "a hooked beak"}.get(value),
        "tail": f"a {value} tail",
        "crest": f"a {value} head",
        "eye": f"{value} eyes",
    }
    if name not in phrases or phrases[name] is None:
        raise ValueError(f"no phrase for attribute {name}={value!r}")
    return phrases[name]


# Per-image description templates, in the spirit of the paper's one-sentence attribute summaries.
# Template 0 (fixed detail order) gives each category's canonical description.
TEMPLATES = (
    "a {build} bird with {plumage}, {details}.",
    "This {build} bird has {plumage}, {details}.",
    "A {build} bird with {details}, and {plumage} overall.",
    "{Plumage} covers this {build} bird, which has {details}.",
    "The bird is {build}, with {plumage}, {details}.",
)


def describe(attributes: dict[str, str], template: int = 0, rng: np.random.Generator | None = None) -> str:
    """One-sentence description of the visible attributes (occluded ones are simply absent).

    With ``rng`` the order of the part details is shuffled, as a human describer's would vary.
    """
    details = []
    if "wing_color" in attributes:
        pattern = attributes.get("wing_pattern", "")
        details.append(f"{pattern} {attributes['wing_color']} wings".strip())
    details += [attribute_phrase(name, attributes[name]) for name in OCCLUDABLE if name in attributes]
    if rng is not None and len(details) > 1:
        details = [details[i] for i in rng.permutation(len(details))]
    plumage = attribute_phrase("plumage", attributes["plumage"])
    text = TEMPLATES[template].format(build=attributes["build"], plumage=plumage, Plumage=plumage.capitalize(),
                                      details=_join(details))
    return text[0].upper() + text[1:] if template else text


# How each attribute's value shows in any description template (the inverse of `describe`).
_VALUE_PATTERNS = {
    "build": r"\b(plump|slender)\b",
    "plumage": r"\b(\w+) plumage\b",
    "wing_color": r"\b(\w+) wings\b",
    "wing_pattern": r"\b(plain|barred|spotted) \w+ wings\b",
    "breast": r"\b(\w+) breast\b",
    "beak": r"\b(short|long|hooked)(?: conical| thin)? beak\b",
    "tail": r"\b(\w+) tail\b",
    "crest": r"\b(crested|smooth) head\b",
    "eye": r"\b(ringed|dark) eyes\b",
}


def parse_description(text: str) -> dict[str, str]:
    """The attribute values a description states, read with the phrases `describe` writes.

    Values that are not in the vocabulary, and attributes the text does not mention, are absent.
    Used to score generated descriptions attribute by attribute, not by loose word overlap.
    """
    import re

    text = text.lower()
    values = {}
    for name, pattern in _VALUE_PATTERNS.items():
        match = re.search(pattern, text)
        if match and match.group(1) in ATTRIBUTES[name]:
            values[name] = match.group(1)
    return values


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _invent_names(rng: np.random.Generator, num_genera: int, species_per_genus: int) -> list[tuple[str, list[str]]]:
    """``[(genus, [species names])]``: invented, unique, and free of attribute words."""
    # Distinct stems and suffixes first ("Reedhopper", "Mossfinch"), so genus names do not look alike.
    stems = [_GENUS_STEMS[i] for i in rng.permutation(len(_GENUS_STEMS))]
    suffixes = [_GENUS_SUFFIXES[i] for i in rng.permutation(len(_GENUS_SUFFIXES))]
    pairs = [(stems[i % len(stems)], suffixes[(i % len(stems) + i // len(stems)) % len(suffixes)])
             for i in range(len(stems) * len(suffixes))]
    genera = [stem + suffix for stem, suffix in pairs if not _has_banned_word(stem + suffix)][:num_genera]
    used: set[str] = set()
    result = []
    for genus in genera:
        epithets = []
        while len(epithets) < species_per_genus:
            word = _invent_epithet(rng)
            if word not in used and not _has_banned_word(word):
                used.add(word)
                epithets.append(word)
        result.append((genus, [f"{e} {genus}" for e in epithets]))
    return result


def _invent_epithet(rng: np.random.Generator) -> str:
    parts = [_EPITHET_HEADS[rng.integers(len(_EPITHET_HEADS))]]
    if rng.random() < 0.5:
        parts.append(_EPITHET_MIDDLES[rng.integers(len(_EPITHET_MIDDLES))])
    parts.append(_EPITHET_TAILS[rng.integers(len(_EPITHET_TAILS))])
    return "".join(parts)


def _has_banned_word(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _BANNED_IN_NAMES)


def _genus_type_attributes(rng: np.random.Generator, plumage: str) -> dict[str, str]:
    """A genus's type species: a random value per attribute, with contrasting part colours."""
    attributes = {"build": _pick(rng, ATTRIBUTES["build"]), "plumage": plumage}
    for name in SPECIES_ATTRIBUTES:
        attributes[name] = _pick(rng, [v for v in ATTRIBUTES[name] if _allowed(name, v, plumage)])
    return attributes


def _pick(rng: np.random.Generator, values) -> str:
    return values[rng.integers(len(values))]


def _allowed(name: str, value: str, plumage: str) -> bool:
    # A wing or breast the colour of the plumage would be invisible.
    return not (name in ("wing_color", "breast") and value == plumage)


def _sibling_mutations(rng: np.random.Generator, base: dict[str, str], count: int) -> list[dict[str, str]]:
    """``count`` siblings of ``base``, each differing from it in exactly one attribute value.

    Each sibling changes a different ``(attribute, value)`` pair, so two siblings differ from each
    other in one attribute (the same one changed) or two. Different attributes are used first, so
    siblings spread over many parts. Part attributes missing from ``base`` (hidden) are left alone.
    """
    order = [SPECIES_ATTRIBUTES[i] for i in rng.permutation(len(SPECIES_ATTRIBUTES))]
    order = [name for name in order if name in base]
    options = {}
    for name in order:
        values = [v for v in ATTRIBUTES[name] if v != base[name] and _allowed(name, v, base["plumage"])]
        options[name] = [values[i] for i in rng.permutation(len(values))]
    mutations = [(name, options[name][round_]) for round_ in range(max(map(len, options.values())))
                 for name in order if round_ < len(options[name])]
    if count > len(mutations):
        raise ValueError(f"SynthConfig: a genus can have at most {len(mutations) + 1} species")
    return [{**base, name: value} for name, value in mutations[:count]]


def lookalikes(attributes: dict[str, str], rng: np.random.Generator, count: int) -> list[dict[str, str]]:
    """``count`` attribute sets that each differ from ``attributes`` in one part: as a sibling species would."""
    return _sibling_mutations(rng, attributes, count)


def build_categories(config: SynthConfig) -> list[dict]:
    """The benchmark's categories (sorted by name; ``label`` is the index), without image counts."""
    rng = np.random.default_rng([config.seed, 0xCA7])
    colours = ATTRIBUTES["plumage"]
    plumages = [colours[i % len(colours)] for i in rng.permutation(max(len(colours), config.num_genera))[:config.num_genera]]
    categories, bases, crowded = [], [], 0
    for (genus, names), plumage in zip(_invent_names(rng, config.num_genera, config.species_per_genus), plumages):
        base, distance = _unique_base(rng, plumage, bases)
        crowded += distance < MIN_GENUS_DISTANCE
        bases.append(base)
        members = [base] + _sibling_mutations(rng, base, config.species_per_genus - 1)
        for name, attributes in zip(names, members):
            categories.append({"name": name, "genus": genus, "attributes": attributes,
                               "description": describe(attributes), "siblings": [n for n in names if n != name]})
    if crowded:
        logger.warning("%d genera are fewer than %d part attributes away from another genus, so some species of other "
                       "genera are as similar as siblings; lower num_genera for cleaner genera", crowded, MIN_GENUS_DISTANCE)
    categories.sort(key=lambda c: c["name"])
    rare = set(rng.permutation(len(categories))[:config.num_rare].tolist())
    for label, category in enumerate(categories):
        category["label"] = label
        category["is_rare"] = label in rare
    return categories


# Genus type species differ in at least this many part attributes (besides plumage), so a species
# of another genus differs in >= 3 attributes while a sibling differs in <= 2: siblings are always
# the most similar categories, as in a real taxonomy.
MIN_GENUS_DISTANCE = 4


def _unique_base(rng: np.random.Generator, plumage: str, bases: list[dict[str, str]]) -> tuple[dict[str, str], int]:
    """A new genus type species, as far as possible from the other genera's (best of many draws), and that distance."""
    best, best_distance = None, -1
    for _ in range(2000):
        candidate = _genus_type_attributes(rng, plumage)
        distance = min((sum(candidate[a] != b[a] for a in SPECIES_ATTRIBUTES) for b in bases), default=len(SPECIES_ATTRIBUTES))
        if distance > best_distance:
            best, best_distance = candidate, distance
        if best_distance >= MIN_GENUS_DISTANCE:
            break
    if best_distance == 0 and any(best["plumage"] == b["plumage"] and best["build"] == b["build"] for b in bases):
        raise ValueError("SynthConfig: too many genera for the attribute space; lower num_genera")
    return best, best_distance


# ----------------------------------------------------------------------------- drawing
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 18, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 18, endpoint=False))], axis=1)


def _ellipse(cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    points = _CIRCLE * (rx, ry)
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        points = points @ np.array([[c, s], [-s, c]])
    return points + (cx, cy)


# Shapes in the bird's own frame: facing right, body centred at the origin, y pointing down,
# about 2.2 units from tail tip to beak tip.
def _body(build: str) -> np.ndarray:
    return _ellipse(0.0, 0.0, 0.55, 0.40) if build == "plump" else _ellipse(0.02, 0.0, 0.62, 0.27)


_HEAD = _ellipse(0.56, -0.30, 0.24, 0.24)
_EYE = _ellipse(0.64, -0.30, 0.055, 0.055)
_EYE_RING = _ellipse(0.64, -0.30, 0.11, 0.11)
_CREST = np.array([[0.40, -0.44], [0.30, -0.78], [0.50, -0.50], [0.50, -0.84], [0.62, -0.52], [0.74, -0.70], [0.72, -0.42]])
# Beaks are drawn large enough to tell apart at 64 px: a short stubby cone, a long thin spike, and a
# hook that bends well below the gape.
_BEAKS = {
    "short": np.array([[0.74, -0.42], [0.98, -0.30], [0.74, -0.19]]),
    "long": np.array([[0.76, -0.36], [1.32, -0.29], [0.76, -0.24]]),
    "hooked": np.array([[0.74, -0.43], [0.98, -0.41], [1.10, -0.27], [1.05, -0.06], [0.98, -0.20], [0.74, -0.21]]),
}
_TAILS = {
    "pointed": np.array([[-0.45, -0.08], [-1.12, 0.20], [-0.45, 0.12]]),
    "forked": np.array([[-0.45, -0.10], [-1.08, -0.14], [-0.80, 0.06], [-1.08, 0.30], [-0.45, 0.14]]),
    "fanned": np.array([[-0.45, -0.04], [-0.95, -0.28], [-1.08, -0.02], [-1.05, 0.24], [-0.90, 0.42], [-0.45, 0.10]]),
}
_WING = _ellipse(-0.10, -0.06, 0.42, 0.20, angle=0.18)
_WING_BARS = [np.array([[x, -0.24], [x - 0.06, 0.12]]) for x in (-0.34, -0.18, -0.02, 0.14)]
_WING_SPOTS = [_ellipse(x, y, 0.06, 0.06) for x, y in ((-0.32, -0.08), (-0.14, -0.14), (-0.12, 0.02), (0.06, -0.08), (0.10, 0.04))]
_LEGS = [np.array([[0.05, 0.25], [0.0, 0.55]]), np.array([[0.22, 0.22], [0.22, 0.55]])]


def _breast(build: str) -> np.ndarray:
    return _ellipse(0.26, 0.12, 0.30, 0.22 if build == "plump" else 0.15, angle=-0.3)


class _Pose:
    """Maps the bird's frame to pixels: mirror (facing side), rotate, scale, translate."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.flip = -1.0 if rng.random() < 0.5 else 1.0
        angle = rng.uniform(-0.26, 0.26)  # +-15 degrees
        scale = size * 0.30 * rng.uniform(0.85, 1.10)
        c, s = math.cos(angle), math.sin(angle)
        self.matrix = np.array([[c, s], [-s, c]]) * scale
        self.offset = np.array([size / 2 + rng.uniform(-0.07, 0.07) * size, size / 2 + rng.uniform(-0.04, 0.08) * size])
        self.scale = scale

    def __call__(self, points: np.ndarray) -> list[float]:
        return (((points * (self.flip, 1.0)) @ self.matrix) + self.offset).ravel().tolist()


def _jitter(colour: tuple[int, int, int], gain: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(colour) * gain, 0, 255))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A muted vertical gradient (sky, foliage or wall), different in every image."""
    top = rng.uniform(110, 225, size=3) * rng.uniform(0.85, 1.0)
    bottom = np.clip(top + rng.uniform(-45, 45, size=3), 60, 235)
    grey = top.mean()
    top, bottom = 0.55 * top + 0.45 * grey, 0.55 * bottom + 0.45 * bottom.mean()  # desaturate
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    return Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).copy())


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(1, 4))):  # twigs
        x0, y0 = rng.uniform(0, size, 2)
        x1, y1 = rng.uniform(0, size, 2)
        shade = int(rng.uniform(70, 140))
        draw.line([x0, y0, x1, y1], fill=(shade, int(shade * 0.8), int(shade * 0.6)), width=1)
    for _ in range(int(rng.integers(0, 4))):  # soft leaves behind the bird
        cx, cy = rng.uniform(0, size, 2)
        leaf = _ellipse(cx, cy, rng.uniform(2, 6), rng.uniform(1.5, 3), rng.uniform(0, np.pi))
        draw.polygon(leaf.ravel().tolist(), fill=(int(rng.uniform(70, 120)), int(rng.uniform(110, 160)), int(rng.uniform(60, 100))))


def _perch(draw: ImageDraw.ImageDraw, rng: np.random.Generator, pose: _Pose, size: int) -> None:
    y = pose(np.array([[0.0, 0.56]]))[1]
    tilt = rng.uniform(-4, 4)
    draw.line([0, y - tilt, size, y + tilt], fill=(96, 66, 40), width=max(2, size // 24))


# Codes of the part map (``draw_bird(..., part_map=True)``): which part each pixel shows; 0 is none.
PARTS = ("background", "body", "tail", "breast", "wing", "crest", "head", "beak", "eye")
# The parts that show each attribute: where in an image its value can be seen.
ATTRIBUTE_PARTS = {"build": ("body",), "plumage": ("body", "head"), "wing_color": ("wing",),
                   "wing_pattern": ("wing",), "breast": ("breast",), "beak": ("beak",), "tail": ("tail",),
                   "crest": ("crest",), "eye": ("eye",)}


class _Canvas:
    """Draws on the image and, when asked for, on a part map with the same shapes (last drawn wins)."""

    def __init__(self, image: Image.Image, part_map: bool):
        self.draw = ImageDraw.Draw(image)
        self.parts = Image.new("L", image.size, 0) if part_map else None
        self._part_draw = ImageDraw.Draw(self.parts) if part_map else None

    def polygon(self, part: str, points, **style) -> None:
        self.draw.polygon(points, **style)
        self.mark(part, points)

    def line(self, part: str, points, **style) -> None:
        self.draw.line(points, **style)
        if self._part_draw is not None:
            self._part_draw.line(points, fill=PARTS.index(part), width=style.get("width", 1))

    def mark(self, part: str, points) -> None:
        """Label a region of the part map only (no paint)."""
        if self._part_draw is not None:
            self._part_draw.polygon(points, fill=PARTS.index(part))


def draw_bird(attributes: dict[str, str], rng: np.random.Generator, size: int = 64, occluded: str | None = None,
              clutter: bool = True, noise_std: tuple[float, float] = (2.0, 8.0), part_map: bool = False):
    """Draw one image of a bird with the given attribute values, in a random pose and scene.

    ``occluded`` names one part (from ``OCCLUDABLE``) that a foreground leaf hides completely. With
    ``part_map`` the result is ``(image, parts)``: an "L" image whose pixels are indices into ``PARTS``
    (what the pixel shows; the leaf hides parts there too). Drawing it changes no pixel of the image.
    """
    image = _background(rng, size)
    canvas = _Canvas(image, part_map)
    if clutter:
        _clutter(canvas.draw, rng, size)
    pose = _Pose(rng, size)
    gain = rng.uniform(0.85, 1.12) * rng.uniform(0.95, 1.05, size=3)  # illumination and white balance
    paint = {name: _jitter(rgb, gain) for name, rgb in COLOURS.items()}
    _perch(canvas.draw, rng, pose, size)
    _draw_parts(canvas, attributes, pose, paint)
    if occluded:
        _occlude(canvas, rng, attributes, occluded, pose)
    image = _add_noise(image, rng, noise_std)
    return (image, canvas.parts) if part_map else image


def _draw_parts(canvas: _Canvas, attributes: dict[str, str], pose: _Pose, paint: dict) -> None:
    plumage = paint[attributes["plumage"]]
    outline = tuple(int(v * 0.45) for v in plumage)
    dark = paint["black"]
    # Where a crest is or would be: "smooth" is seen there as much as "crested" is.
    canvas.mark("crest", pose(_occlusion_box(attributes, "crest")))
    for leg in _LEGS:
        canvas.line("background", pose(leg), fill=(70, 60, 50), width=1)
    canvas.polygon("tail", pose(_TAILS[attributes["tail"]]), fill=tuple(int(v * 0.8) for v in plumage), outline=outline)
    canvas.polygon("body", pose(_body(attributes["build"])), fill=plumage, outline=outline)
    canvas.polygon("breast", pose(_breast(attributes["build"])), fill=paint[attributes["breast"]])
    wing = paint[attributes["wing_color"]]
    canvas.polygon("wing", pose(_WING), fill=wing, outline=outline)
    mark = paint["white"] if attributes["wing_color"] in ("black", "brown", "blue") else dark
    if attributes["wing_pattern"] == "barred":
        for bar in _WING_BARS:
            canvas.line("wing", pose(bar), fill=mark, width=max(1, round(pose.scale * 0.06)))
    elif attributes["wing_pattern"] == "spotted":
        for spot in _WING_SPOTS:
            canvas.polygon("wing", pose(spot), fill=mark)
    if attributes["crest"] == "crested":
        canvas.polygon("crest", pose(_CREST), fill=tuple(int(v * 0.7) for v in plumage), outline=outline)
    canvas.polygon("head", pose(_HEAD), fill=plumage, outline=outline)
    canvas.polygon("beak", pose(_BEAKS[attributes["beak"]]), fill=(62, 52, 40))
    if attributes["eye"] == "ringed":
        canvas.polygon("eye", pose(_EYE_RING), fill=paint["white"])
    canvas.mark("eye", pose(_EYE_RING))  # a dark eye is seen where a ring would be
    canvas.polygon("eye", pose(_EYE), fill=dark)


def _bounds(*shapes: np.ndarray) -> tuple[float, float, float, float]:
    points = np.concatenate(shapes)
    return (*points.min(axis=0), *points.max(axis=0))


# Bird-frame boxes that a leaf covers to hide a part. They cover every value of the part (hiding a
# crestless head hides the absence too) and stay clear of the neighbouring parts.
_OCCLUSION_BOXES = {
    "beak": _bounds(*_BEAKS.values()),
    "tail": _bounds(*_TAILS.values()),
    "crest": (0.28, -0.88, 0.78, -0.50),  # the part of the crest above the head's outline
    "eye": _bounds(_EYE_RING),
}


def _occlusion_box(attributes: dict[str, str], part: str) -> np.ndarray:
    margin = 0.07
    x0, y0, x1, y1 = _bounds(_breast(attributes["build"])) if part == "breast" else _OCCLUSION_BOXES[part]
    x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _occlude(canvas: _Canvas, rng: np.random.Generator, attributes: dict[str, str], part: str, pose: _Pose) -> None:
    """A foreground leaf (a box that turns with the bird) over the part, so no trace of it shows."""
    leaf = (int(rng.uniform(30, 70)), int(rng.uniform(90, 130)), int(rng.uniform(30, 60)))
    canvas.polygon("background", pose(_occlusion_box(attributes, part)), fill=leaf, outline=tuple(int(v * 0.6) for v in leaf))


def _add_noise(image: Image.Image, rng: np.random.Generator, noise_std: tuple[float, float]) -> Image.Image:
    std = rng.uniform(*noise_std)
    if std <= 0:
        return image
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, std, size=(image.height, image.width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- samples
SPLITS = {"train": 1, "test": 2, "validation": 3}


def sample_image(category: dict, split: str, index: int, config: SynthConfig, attempt: int = 0):
    """Draw image ``index`` of ``category`` in ``split``: ``(image, visible attributes, description)``.

    The random stream depends only on ``(seed, split, label, index, attempt)``, so an image does not
    change when other images, categories or split sizes change.
    """
    rng = np.random.default_rng([config.seed, SPLITS[split], category["label"], index, attempt])
    occluded = OCCLUDABLE[rng.integers(len(OCCLUDABLE))] if rng.random() < config.occlusion_prob else None
    image = draw_bird(category["attributes"], rng, config.image_size, occluded, config.clutter, config.noise_std)
    visible = {k: v for k, v in category["attributes"].items() if k != occluded}
    description = describe(visible, template=int(rng.integers(len(TEMPLATES))), rng=rng)
    return image, visible, description


# Stream key of the attribute pool: birds with random attribute values, no species.
POOL_STREAM = 0xB1D


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Every attribute drawn at random (wing and breast never the plumage's colour): a bird of no species."""
    return _genus_type_attributes(rng, _pick(rng, ATTRIBUTES["plumage"]))


def pool_sample(index: int, config: SynthConfig, part_map: bool = False) -> tuple:
    """Image ``index`` of the attribute pool: ``(image, visible attributes, description)``, and its part
    map last with ``part_map`` (see ``draw_bird``).

    The pool stands in for the generic image-text data a real vision encoder and captioner are
    pre-trained on: the same drawing and scenes as the benchmark, but every attribute value random,
    so it teaches what the attributes look like and holds no information about any species.
    """
    rng = np.random.default_rng([config.seed, POOL_STREAM, index])
    attributes = random_attributes(rng)
    occluded = OCCLUDABLE[rng.integers(len(OCCLUDABLE))] if rng.random() < config.occlusion_prob else None
    drawn = draw_bird(attributes, rng, config.image_size, occluded, config.clutter, config.noise_std, part_map)
    image, parts = drawn if part_map else (drawn, None)
    visible = {k: v for k, v in attributes.items() if k != occluded}
    sample = (image, visible, describe(visible, template=int(rng.integers(len(TEMPLATES))), rng=rng))
    return (*sample, parts) if part_map else sample


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: 5x faster than the default, ~10% larger
    return buffer.getvalue()


def _split_counts(category: dict, config: SynthConfig) -> dict[str, int]:
    train = config.rare_train_per_category if category["is_rare"] else config.train_per_category
    return {"train": train, "validation": config.validation_per_category, "test": config.test_per_category}


def _write_split(root: Path, split: str, categories: list[dict], config: SynthConfig, negatives: dict,
                 neg_descriptions: dict, seen_pixels: set, progress_bar) -> list[dict]:
    """Draw and save one split; returns its metadata rows. No image is identical to another."""
    folder = root / split
    folder.mkdir(parents=True)
    rows = []
    for category in categories:
        for index in range(_split_counts(category, config)[split]):
            image, visible, description, data = _unique_sample(category, split, index, config, seen_pixels)
            file_name = f"{category['label']:03d}-{index:04d}.png"
            (folder / file_name).write_bytes(data)
            rows.append({"file_name": file_name, "category": category["name"], "label": category["label"],
                         "attribute": description, "attributes": json.dumps(visible, sort_keys=True),
                         "neg_categories": negatives[category["name"]], "neg_attributes": neg_descriptions[category["name"]],
                         "genus": category["genus"], "is_rare": category["is_rare"]})
            progress_bar.update(1)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def _unique_sample(category, split, index, config, seen_pixels):
    # Identical pixels in train and test would leak; redraw (next attempt) in the unlikely event.
    for attempt in range(100):
        image, visible, description = sample_image(category, split, index, config, attempt)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if digest not in seen_pixels:
            seen_pixels.add(digest)
            return image, visible, description, _png_bytes(image)
    raise RuntimeError(f"could not draw a unique image for {category['name']!r} ({split} {index})")


# ----------------------------------------------------------------------------- benchmark folder
def generate_benchmark(output_dir: str | Path, config: SynthConfig = SynthConfig(), progress: bool = True,
                       overwrite: bool = False) -> Path:
    """Generate the synthetic benchmark folder (layout in the module docstring) and return its path.

    The folder is built next to ``output_dir`` (a hidden ``.<name>-*`` folder) and moved into place at the
    end, so an interrupted run never leaves a half-written benchmark; the hidden folder of a run that was
    killed (which cannot clean up after itself) is removed by the next run for the same ``output_dir``.

    Raises:
        ValueError: ``output_dir`` exists and is not empty (pass ``overwrite=True`` to replace a
            previous benchmark; other folders are never deleted).
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    categories = build_categories(config)
    negatives = mine_by_attributes(categories, k=config.num_negatives)
    neg_descriptions = negative_descriptions(negatives, {c["name"]: c["description"] for c in categories})
    total = sum(sum(_split_counts(c, config).values()) for c in categories)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(output_dir), dir=output_dir.parent))
    lock = _StagingLock(staging)
    try:
        seen_pixels: set = set()
        with tqdm(total=total, desc="drawing birds", unit="img", disable=not progress) as bar:
            splits = {split: _write_split(staging, split, categories, config, negatives, neg_descriptions, seen_pixels, bar)
                      for split in written_splits(config)}
        _write_extras(staging, categories, negatives, splits, config)
        lock.release()  # its file must not travel into the benchmark
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("synthetic benchmark: %d categories, %s images in %s", len(categories),
                " / ".join(f"{len(rows)} {split}" for split, rows in splits.items()), output_dir)
    return output_dir


def _staging_prefix(output_dir: Path) -> str:
    return f".{output_dir.name}-"


class _StagingLock:
    """An exclusive lock held on a file inside a staging folder while its run is alive.

    The operating system drops the lock when the process dies, even when it is killed (SIGKILL, OOM), so a
    staging folder whose lock can be taken belongs to no running process (:func:`_remove_abandoned_staging`).
    Without ``fcntl`` (Windows) nothing is locked and abandoned folders are left alone.
    """

    FILE_NAME = ".finedefics-staging.lock"

    def __init__(self, staging: Path):
        self.path = staging / self.FILE_NAME
        self.handle = open(self.path, "w")
        if _flock(self.handle, blocking=True) is None:
            self.release()  # no locking here: a lock file nobody holds would let another run delete this folder

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()  # closing drops the lock
            self.handle = None


def _flock(handle, blocking: bool) -> bool | None:
    """Take an exclusive lock on ``handle``: True when taken, False when another process holds it, None
    where the platform has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove_abandoned_staging(output_dir: Path) -> None:
    """Delete the staging folders of earlier runs for ``output_dir`` that were killed mid-way (their lock is
    free); a folder of a run still going holds its lock and is kept."""
    for folder in output_dir.parent.iterdir():
        lock_path = folder / _StagingLock.FILE_NAME
        if not (folder.name.startswith(_staging_prefix(output_dir)) and lock_path.is_file()):
            continue
        with open(lock_path, "a") as handle:
            if not _flock(handle, blocking=False):
                continue
        logger.info("removing %s, left behind by a run that was killed mid-way", folder)
        shutil.rmtree(folder, ignore_errors=True)


def written_splits(config: SynthConfig) -> tuple[str, ...]:
    return ("train", "validation", "test") if config.validation_per_category else ("train", "test")


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"{output_dir} exists and is not empty; choose a new folder or pass overwrite (--overwrite)")
    if not (output_dir / "categories.json").is_file():
        raise ValueError(f"{output_dir} is not empty and is not a synthetic benchmark (no categories.json); refusing to delete it")


def _write_extras(root: Path, categories: list[dict], negatives: dict, splits: dict, config: SynthConfig) -> None:
    keys = ("name", "label", "genus", "attributes", "description", "is_rare", "siblings", "negatives", "n_train",
            "n_validation", "n_test")
    entries = []
    for category in categories:
        counts = _split_counts(category, config)
        full = {**category, "negatives": negatives[category["name"]], "n_train": counts["train"],
                "n_validation": counts["validation"], "n_test": counts["test"]}
        entries.append({k: full[k] for k in keys})
    _write_json(root / "categories.json", entries)
    _write_json(root / "config.json", {"version": BENCHMARK_VERSION, **asdict(config)})
    test_records = [{"image": f"test/{row['file_name']}", "category": row["category"]} for row in splits["test"]]
    foci = build_option_sets(test_records, negatives, num_options=min(4, config.num_categories), seed=config.seed)
    _write_json(root / "foci_test.json", foci)
    write_reference_csv(root / "train_reference.csv", splits["train"], image_prefix="train/")
    (root / "README.md").write_text(benchmark_readme(entries, config), encoding="utf-8")


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


REFERENCE_COLUMNS = ("question", "answer", "type", "image_path", "image_path_1", "image_path_2", "attribute",
                     "neg_attribute", "category", "neg_category")


def write_reference_csv(path: str | Path, rows: list[dict], image_prefix: str = "", question: str | None = None) -> Path:
    """Write records in the reference implementation's stage I CSV format.

    Each row asks for the image's attributes and answers with its description; negatives share one
    cell, separated by a tab and a newline. Image paths are relative to the benchmark folder.
    """
    if question is None:
        question = describe_instruction(ObjectNoun.of(NOUN))  # the trainer's stage I instruction
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REFERENCE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"question": question, "answer": row["attribute"], "type": "single-image",
                             "image_path": image_prefix + row["file_name"], "image_path_1": "", "image_path_2": "",
                             "attribute": row["attribute"], "neg_attribute": NEGATIVE_SEPARATOR.join(row["neg_attributes"]),
                             "category": row["category"], "neg_category": NEGATIVE_SEPARATOR.join(row["neg_categories"])})
    return Path(path)


def benchmark_readme(categories: list[dict], config: SynthConfig) -> str:
    """The benchmark's README: what the task is, how it was made, and its numbers."""
    rare = [c for c in categories if c["is_rare"]]
    n_train = sum(c["n_train"] for c in categories)
    n_test = sum(c["n_test"] for c in categories)
    n_validation = sum(c.get("n_validation", 0) for c in categories)
    attribute_rows = "\n".join(f"| {name} | {', '.join(values)} |" for name, values in ATTRIBUTES.items())
    example = categories[0]
    return f"""# Synthetic fine-grained bird benchmark

Procedurally drawn stylised birds ({config.image_size}x{config.image_size} px), generated by
`finedefics data synth` (seed {config.seed}). A miniature CUB-200: {len(categories)} invented species in
{config.num_genera} genera of {config.species_per_genus}. Species of one genus share build and plumage colour and
differ from the genus's type species in one part-level attribute, so two siblings differ in one or two
attributes. Names are invented and do not spell out attributes.

| split | images |
|---|---|
| train | {n_train} |
| validation | {n_validation} |
| test | {n_test} |

**Long tail.** {len(rare)} of {len(categories)} categories ({100 * len(rare) / len(categories):.0f}%, `is_rare`) have
{config.rare_train_per_category} training images; the others have {config.train_per_category}. Every category has
{config.validation_per_category} validation and {config.test_per_category} test images. Validation images are drawn like
training images, from random streams of their own: choose settings on them and keep the test split for the final table.

**Within-category variation.** Facing side, rotation (+-15 degrees), scale, position, background gradient and
clutter, colour jitter, pixel noise; with probability {config.occlusion_prob} a leaf hides one of {', '.join(OCCLUDABLE)}
(the image's description and `attributes` then omit it).

**Attributes.**

| attribute | values |
|---|---|
{attribute_rows}

Example: **{example['name']}** (genus {example['genus']}): {example['description']}

## Files

- `train/`, `validation/`, `test/`: PNG images and `metadata.jsonl` (`file_name`, `category`, `label`, `attribute`,
  `attributes` (JSON), `neg_categories`, `neg_attributes`, `genus`, `is_rare`);
  `datasets.load_dataset("imagefolder", data_dir=...)` loads the splits.
- `categories.json`: name, label, genus, attributes, canonical description, is_rare, siblings,
  hard negatives ({config.num_negatives}, by attribute overlap), n_train, n_validation, n_test.
- `foci_test.json`: the test split as FOCI 4-way multiple choice (ground truth first, then hard negatives).
- `train_reference.csv`: the train split in the reference implementation's CSV format.
- `config.json`: the generator settings; the same settings give the same bytes.
"""


def distinguishing_attributes(category: dict, categories: list[dict]) -> list[str]:
    """Attributes in which ``category`` differs from at least one sibling: what sets it apart in its genus."""
    siblings = [c for c in categories if c["genus"] == category["genus"] and c["name"] != category["name"]]
    return [name for name in ATTRIBUTES if any(s["attributes"][name] != category["attributes"][name] for s in siblings)]


# ----------------------------------------------------------------------------- loading
def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what} (build a benchmark with `finedefics data synth DIR`)")
    return path


def load_categories(data_dir: str | Path) -> list[dict]:
    """``categories.json`` of a benchmark folder, checked (a list of objects with a ``name``), sorted by label."""
    path = _require(Path(data_dir) / "categories.json", "not a synthetic benchmark folder")
    try:
        categories = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: expected a non-empty list of categories")
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("name"), str) or not category["name"].strip():
            raise ValueError(f"{path}: category {index}: field 'name' must be a non-empty string")
    return sorted(categories, key=lambda category: category.get("label", 0))


def load_metadata(data_dir: str | Path, split: str) -> list[dict]:
    """The metadata rows of one split, each validated as a training record (errors name the file and line)."""
    path = _require(Path(data_dir) / split / "metadata.jsonl", f"no {split} split")

    def check_row(row: dict, where: str) -> None:
        validate_record({**row, "image": row.get("file_name")}, source=str(path), row=where)

    return read_jsonl(path, check_row=check_row)


def benchmark_splits(data_dir: str | Path) -> list[str]:
    """The splits a benchmark folder holds (benchmarks made before version 2 have no validation split)."""
    return [split for split in SPLITS if (Path(data_dir) / split / "metadata.jsonl").is_file()] or ["train", "test"]


def load_synthetic_dataset(data_dir: str | Path):
    """The benchmark as a ``datasets.DatasetDict`` with ``train``, ``test`` and (when drawn) ``validation`` splits.

    Columns: ``image`` (PIL), ``category``, ``label``, ``attribute``, ``attributes`` (JSON string),
    ``neg_categories`` / ``neg_attributes`` (lists), ``genus``, ``is_rare``. Metadata rows are
    validated first, so a broken row is reported with its file and line.
    """
    import datasets

    data_dir = Path(data_dir)
    load_categories(data_dir)
    for split in benchmark_splits(data_dir):
        load_metadata(data_dir, split)
    features = datasets.Features({
        "image": datasets.Image(), "category": datasets.Value("string"), "label": datasets.Value("int64"),
        "attribute": datasets.Value("string"), "attributes": datasets.Value("string"),
        "neg_categories": datasets.List(datasets.Value("string")), "neg_attributes": datasets.List(datasets.Value("string")),
        "genus": datasets.Value("string"), "is_rare": datasets.Value("bool"),
    })
    return datasets.load_dataset("imagefolder", data_dir=str(data_dir), features=features)


# The name this function had before evaluation's ``finedefics_eval.load_benchmark`` (which returns a
# ``Benchmark`` of multiple-choice questions, not a ``DatasetDict``) made it ambiguous; kept for old imports.
load_benchmark = load_synthetic_dataset


def text_corpus(data_dir: str | Path) -> list[str]:
    """Every text the model will read or write on this benchmark, for training a tiny tokenizer offline.

    Category and genus names, canonical and per-image descriptions, attribute words, and the
    instruction phrasing (description, open-set and multiple-choice questions and answers).
    """
    data_dir = Path(data_dir)
    categories = load_categories(data_dir)
    texts = [c["name"] for c in categories] + sorted({c["genus"] for c in categories})
    texts += [c["description"] for c in categories]
    for split in benchmark_splits(data_dir):
        texts += [row["attribute"] for row in load_metadata(data_dir, split)]
    texts += [" ".join(values) for values in ATTRIBUTES.values()] + [" ".join(ATTRIBUTES)]
    texts += _instruction_texts(categories)
    return list(dict.fromkeys(t for t in texts if t))


def _instruction_texts(categories: list[dict]) -> list[str]:
    names = [c["name"] for c in categories]
    noun = ObjectNoun.of(NOUN)
    return [
        describe_instruction(noun),
        open_set_question(noun),
        multiple_choice_prompt(multiple_choice_query(noun), names[:len(CHOICE_LETTERS)], CHOICE_LETTERS),
        "A", "B", "C", "D", "Answer: A", f"The {NOUN} is a {names[0]}.",
    ]
