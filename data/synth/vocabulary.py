"""The benchmark's vocabulary: attributes and their values, invented species and genus names, the
categories built from them, one-sentence descriptions and the parser that reads them back.

Nothing here draws or writes files; :mod:`.drawing` paints these attribute sets and :mod:`.writing`
stores the categories.
"""

from __future__ import annotations

import logging

import numpy as np

from ..schema import SYNTHETIC_BENCHMARK_NOUN

logger = logging.getLogger(__package__)  # "finedefics_data.synth", as before the split

NOUN = SYNTHETIC_BENCHMARK_NOUN

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
# Each attribute as a person asks about it ("What is the wing colour of the bird?"): the questions the demo's
# generated descriptions ask, one per attribute.
ATTRIBUTE_QUESTION_NAMES: dict[str, str] = {
    "build": "build", "plumage": "plumage", "wing_color": "wing colour", "wing_pattern": "wing pattern",
    "breast": "breast", "beak": "beak", "tail": "tail", "crest": "crest", "eye": "eye"}
# Siblings differ from their genus's type species in one of these part-level attributes; build and
# plumage stay fixed within a genus, as body shape and overall colour do within a real genus.
SPECIES_ATTRIBUTES = ("wing_color", "wing_pattern", "breast", "beak", "tail", "crest", "eye")
# Parts that a foreground leaf may hide (the description then leaves them out).
OCCLUDABLE = ("breast", "beak", "tail", "crest", "eye")

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


def build_categories(config) -> list[dict]:
    """The benchmark's categories (sorted by name; ``label`` is the index), without image counts.

    ``config`` is a ``SynthConfig`` (config.py, which reads this module's vocabulary: not imported here, so the two
    do not import each other); its ``seed``, ``num_genera``, ``species_per_genus`` and ``num_rare`` are read.
    """
    rng = np.random.default_rng([config.seed, 0xCA7])
    colours = ATTRIBUTES["plumage"]
    plumages = [colours[i % len(colours)]
                for i in rng.permutation(max(len(colours), config.num_genera))[:config.num_genera]]
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
                       "genera are as similar as siblings; lower num_genera for cleaner genera", crowded,
                       MIN_GENUS_DISTANCE)
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
        distance = min((sum(candidate[a] != b[a] for a in SPECIES_ATTRIBUTES) for b in bases),
                       default=len(SPECIES_ATTRIBUTES))
        if distance > best_distance:
            best, best_distance = candidate, distance
        if best_distance >= MIN_GENUS_DISTANCE:
            break
    if best_distance == 0 and any(best["plumage"] == b["plumage"] and best["build"] == b["build"] for b in bases):
        raise ValueError("SynthConfig: too many genera for the attribute space; lower num_genera")
    return best, best_distance


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Every attribute drawn at random (wing and breast never the plumage's colour): a bird of no species."""
    return _genus_type_attributes(rng, _pick(rng, ATTRIBUTES["plumage"]))


def distinguishing_attributes(category: dict, categories: list[dict]) -> list[str]:
    """Attributes in which ``category`` differs from at least one sibling: what sets it apart in its genus."""
    siblings = [c for c in categories if c["genus"] == category["genus"] and c["name"] != category["name"]]
    return [name for name in ATTRIBUTES
            if any(s["attributes"][name] != category["attributes"][name] for s in siblings)]
