"""The generator's settings (:class:`SynthConfig`): size and difficulty of the synthetic benchmark, checked."""

from __future__ import annotations

from dataclasses import dataclass

from .vocabulary import _GENUS_STEMS, _GENUS_SUFFIXES, ATTRIBUTES, SPECIES_ATTRIBUTES


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
            (1 <= self.num_genera <= len(_GENUS_STEMS) * len(_GENUS_SUFFIXES),
             f"num_genera must be 1..{len(_GENUS_STEMS) * len(_GENUS_SUFFIXES)}"),
            (2 <= self.species_per_genus <= max_species,
             f"species_per_genus must be 2..{max_species} (siblings are needed as hard negatives)"),
            (self.train_per_category >= 1 and self.test_per_category >= 1,
             "train_per_category and test_per_category must be >= 1"),
            (self.validation_per_category >= 0, "validation_per_category must be >= 0"),
            (0.0 <= self.rare_fraction < 1.0, "rare_fraction must be in [0, 1)"),
            (1 <= self.rare_train_per_category <= self.train_per_category,
             "rare_train_per_category must be 1..train_per_category"),
            (32 <= self.image_size <= 1024, "image_size must be 32..1024"),
            (1 <= self.num_negatives < self.num_categories, "num_negatives must be 1..(number of categories - 1)"),
            (0.0 <= self.occlusion_prob <= 1.0, "occlusion_prob must be in [0, 1]"),
            (len(self.noise_std) == 2 and 0 <= self.noise_std[0] <= self.noise_std[1],
             "noise_std must be (low, high) with 0 <= low <= high"),
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
