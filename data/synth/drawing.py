"""Drawing: bird shapes, poses, scenes, occluding leaves and part maps (:func:`draw_bird`), and the images
of the benchmark (:func:`sample_image`) and of the attribute pool (:func:`pool_sample`), each from its own
random stream.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .config import SynthConfig
from .vocabulary import OCCLUDABLE, TEMPLATES, describe, random_attributes

# Paint of each colour value (jittered per image).
COLOURS = {
    "red": (200, 40, 40), "orange": (238, 132, 30), "yellow": (236, 208, 52), "green": (58, 152, 66),
    "blue": (48, 88, 206), "brown": (126, 82, 44), "grey": (138, 138, 138), "black": (32, 32, 32),
    "white": (240, 240, 240),
}


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
_CREST = np.array([[0.40, -0.44], [0.30, -0.78], [0.50, -0.50], [0.50, -0.84], [0.62, -0.52], [0.74, -0.70],
                   [0.72, -0.42]])
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
_WING_SPOTS = [_ellipse(x, y, 0.06, 0.06)
               for x, y in ((-0.32, -0.08), (-0.14, -0.14), (-0.12, 0.02), (0.06, -0.08), (0.10, 0.04))]
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
        self.offset = np.array([size / 2 + rng.uniform(-0.07, 0.07) * size,
                                size / 2 + rng.uniform(-0.04, 0.08) * size])
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
        draw.polygon(leaf.ravel().tolist(),
                     fill=(int(rng.uniform(70, 120)), int(rng.uniform(110, 160)), int(rng.uniform(60, 100))))


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
    canvas.polygon("tail", pose(_TAILS[attributes["tail"]]), fill=tuple(int(v * 0.8) for v in plumage),
                   outline=outline)
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
    canvas.polygon("background", pose(_occlusion_box(attributes, part)), fill=leaf,
                   outline=tuple(int(v * 0.6) for v in leaf))


def _add_noise(image: Image.Image, rng: np.random.Generator, noise_std: tuple[float, float]) -> Image.Image:
    std = rng.uniform(*noise_std)
    if std <= 0:
        return image
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, std,
                                                              size=(image.height, image.width, 3)).astype(np.float32)
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
