"""Hard-negative mining for categories, and FOCI-style multiple-choice option sets.

A hard negative of a category is another category that a model could mistake it for. Three miners,
all returning ``{category: [negative names, most similar first]}``:

- :func:`mine_by_attributes`: overlap of structured attribute values (Jaccard), where attributes
  exist (the synthetic benchmark, CUB-200's attribute annotations);
- :func:`mine_by_embeddings`: cosine similarity of any embedding function over names, descriptions
  or images (e.g. a Finedefics model's ``get_text_embeddings`` / ``get_image_embeddings``, through
  :func:`finedefics_text_embedder` / :func:`finedefics_image_embedder`);
- :func:`mine_by_confusion`: how often earlier predictions confused two categories.

:func:`build_option_sets` turns mined negatives into FOCI's option format for a new dataset.
Ties are broken by the order of the given names, so every miner is deterministic.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

Negatives = dict[str, list[str]]


# ----------------------------------------------------------------------------- ranking
def top_k_from_similarity(similarity, names: Sequence[str], k: int, exclude_non_positive: bool = False,
                          how: str = "similarity") -> Negatives:
    """For each row category, the ``k`` most similar other categories (diagonal excluded).

    Categories that get fewer than ``k`` (fewer than ``k + 1`` categories, or candidates excluded)
    are logged, naming ``how`` they were mined.

    Args:
        similarity: ``(N, N)`` array; ``similarity[i, j]`` is how similar category ``j`` is to ``i``.
        names: the ``N`` category names.
        k: negatives per category.
        exclude_non_positive: drop candidates whose similarity is <= 0 (e.g. never confused).
    """
    names = list(names)
    similarity = np.asarray(similarity, dtype=np.float64)
    _check_square(similarity, names)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(names) < 2:
        raise ValueError(f"category {names[0]!r} has no possible negative: it is the only category" if names
                         else "no categories given")
    negatives = {}
    for i, name in enumerate(names):
        scores = similarity[i].copy()
        scores[i] = -np.inf
        order = np.argsort(-scores, kind="stable")  # stable: ties keep the names' order
        chosen = [j for j in order if j != i and (not exclude_non_positive or scores[j] > 0)]
        negatives[name] = [names[j] for j in chosen[:k]]
    report_short_lists(negatives, k, how)
    return negatives


def _check_square(matrix: np.ndarray, names: list[str]) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
        raise ValueError(f"expected a ({len(names)}, {len(names)}) matrix for {len(names)} categories, got shape "
                         f"{matrix.shape}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"category names must be unique; {duplicates[0]!r} appears more than once")


def report_short_lists(negatives: Negatives, k: int, how: str) -> list[str]:
    """Log (and return) the categories that got fewer than ``k`` negatives."""
    short = [name for name, found in negatives.items() if len(found) < k]
    if short:
        logger.warning("%d of %d categories have fewer than %d negatives by %s (e.g. %s)",
                       len(short), len(negatives), k, how, ", ".join(repr(n) for n in short[:5]))
    return short


# ----------------------------------------------------------------------------- attributes
def attribute_similarity(a: Mapping, b: Mapping) -> float:
    """Jaccard overlap of two attribute sets: ``|A ∩ B| / |A ∪ B|`` over ``(name, value)`` pairs.

    A value may be a string or a list of strings (several values seen, as in CUB-200).
    """
    pairs_a, pairs_b = _attribute_pairs(a), _attribute_pairs(b)
    union = pairs_a | pairs_b
    return len(pairs_a & pairs_b) / len(union) if union else 0.0


def _attribute_pairs(attributes: Mapping) -> set[tuple[str, str]]:
    pairs = set()
    for name, value in attributes.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        pairs.update((name, str(v)) for v in values)
    return pairs


def mine_by_attributes(categories, k: int = 3) -> Negatives:
    """Top-``k`` hard negatives per category by attribute overlap (:func:`attribute_similarity`).

    Args:
        categories: a list of ``{"name": ..., "attributes": {...}}`` (as in ``categories.json``; the
            attributes may be a JSON string), or a mapping ``{name: attributes}``.
        k: negatives per category.

    Raises:
        ValueError: a category without attributes, duplicate names, or fewer than two categories.
    """
    table = _attribute_table(categories)
    names = list(table)
    similarity = np.array([[attribute_similarity(table[a], table[b]) for b in names] for a in names])
    return top_k_from_similarity(similarity, names, k, how="attribute overlap")


def _attribute_table(categories) -> dict[str, dict]:
    if isinstance(categories, Mapping):
        items = list(categories.items())
    else:
        items = [(c.get("name"), c.get("attributes")) for c in categories]
    table = {}
    for index, (name, attributes) in enumerate(items):
        if isinstance(attributes, str):
            attributes = json.loads(attributes) if attributes else {}
        if not name:
            raise ValueError(f"category {index}: field 'name' is empty")
        if name in table:
            raise ValueError(f"category {name!r} appears more than once")
        if not attributes:
            raise ValueError(f"category {name!r}: field 'attributes' is empty, so it cannot be compared by attributes")
        table[name] = dict(attributes)
    return table


# ----------------------------------------------------------------------------- embeddings
def mine_by_embeddings(names: Sequence[str], embed_fn: Callable, k: int = 3, inputs=None,
                       batch_size: int = 64) -> Negatives:
    """Top-``k`` hard negatives per category by cosine similarity of embeddings.

    ``similarity[i, j] = cos(e_i, e_j)`` where ``e_i`` is category ``i``'s embedding: the embedding
    of its input, or, when a category has several inputs (e.g. a few training images or
    descriptions), the re-normalised mean of their L2-normalised embeddings.

    Args:
        names: category names.
        embed_fn: maps a list of inputs to an ``(N, D)`` tensor or array (texts, or PIL images for an
            image embedder).
        k: negatives per category.
        inputs: what to embed per category: ``None`` (the names themselves), a sequence aligned with
            ``names``, or a mapping ``{name: input or list of inputs}``.
        batch_size: inputs per ``embed_fn`` call.
    """
    names = list(names)
    per_category = _inputs_per_category(names, inputs)
    flat = [item for items in per_category for item in items]
    vectors = _normalise(_embed_in_batches(embed_fn, flat, batch_size), flat)
    centroids, start = [], 0
    for items in per_category:
        centroids.append(vectors[start:start + len(items)].mean(axis=0))
        start += len(items)
    centroids = _normalise(np.stack(centroids), names)
    return top_k_from_similarity(centroids @ centroids.T, names, k, how="embedding similarity")


def _inputs_per_category(names: list[str], inputs) -> list[list]:
    if inputs is None:
        return [[name] for name in names]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"no embedding inputs for category {missing[0]!r}")
        inputs = [inputs[n] for n in names]
    if len(inputs) != len(names):
        raise ValueError(f"got inputs for {len(inputs)} categories, expected {len(names)}")
    per_category = [list(item) if isinstance(item, (list, tuple)) else [item] for item in inputs]
    for name, items in zip(names, per_category):
        if not items:
            raise ValueError(f"category {name!r} has an empty list of embedding inputs")
    return per_category


def _embed_in_batches(embed_fn: Callable, items: list, batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        output = _to_numpy(embed_fn(batch))
        if output.ndim != 2 or output.shape[0] != len(batch):
            raise ValueError(f"embed_fn returned shape {tuple(output.shape)} for {len(batch)} inputs; expected "
                             f"({len(batch)}, D)")
        chunks.append(output)
    return np.concatenate(chunks)


def _to_numpy(output) -> np.ndarray:
    if hasattr(output, "detach"):  # a torch tensor, possibly on an accelerator or in half precision
        output = output.detach().float().cpu().numpy()
    return np.asarray(output, dtype=np.float64)


def _normalise(vectors: np.ndarray, labels: list) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = np.flatnonzero((norms[:, 0] == 0) | ~np.isfinite(norms[:, 0]))
    if bad.size:
        raise ValueError(f"embedding of input {bad[0]} ({str(labels[bad[0]])[:60]!r}) has zero or non-finite norm")
    return vectors / norms


def finedefics_text_embedder(model, processor) -> Callable[[list[str]], object]:
    """An ``embed_fn`` over texts from a Finedefics model: ``model.embed_labels`` (chunked, no gradients)."""

    def embed(texts: list[str]):
        return model.embed_labels([str(text) for text in texts], processor)

    return embed


def finedefics_image_embedder(model, processor) -> Callable[[list], object]:
    """An ``embed_fn`` over PIL images from a Finedefics model: ``model.get_image_embeddings``, no gradients."""
    import torch

    def embed(images: list):
        pixels = processor.image_processor([[image.convert("RGB")] for image in images], return_tensors="pt")
        mask = pixels.get("pixel_attention_mask")
        with torch.no_grad():
            return model.get_image_embeddings(pixels["pixel_values"].to(model.device, model.dtype),
                                              mask.to(model.device) if mask is not None else None)

    return embed


# ----------------------------------------------------------------------------- confusion
def confusion_from_predictions(labels: Sequence[str], predictions: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """``confusion[i, j]``: how many images of category ``names[i]`` were predicted as ``names[j]``.

    Predictions that are not a known category name (generation failures) are not counted.
    """
    index = {name: i for i, name in enumerate(names)}
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for row, (label, predicted) in enumerate(zip(labels, predictions)):
        if label not in index:
            raise ValueError(f"prediction {row}: ground-truth label {label!r} is not a known category")
        if predicted in index:
            confusion[index[label], index[predicted]] += 1
    return confusion


def mine_by_confusion(confusion, names: Sequence[str], k: int = 3) -> Negatives:
    """Top-``k`` hard negatives per category from a confusion matrix of earlier predictions.

    Confusion is counted both ways, ``s[i, j] = C[i, j] + C[j, i]``: if images of ``j`` are taken for
    ``i``, ``j`` is as hard a negative for ``i`` as the reverse. Categories never confused with ``i``
    are not negatives, so a category can get fewer than ``k`` (they are logged; fill them with
    :func:`merge_negatives` from another miner).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    names = list(names)
    _check_square(confusion, names)
    if (confusion < 0).any():
        raise ValueError("a confusion matrix cannot hold negative counts")
    return top_k_from_similarity(confusion + confusion.T, names, k, exclude_non_positive=True, how="confusion")


def merge_negatives(primary: Negatives, fallback: Negatives, k: int) -> Negatives:
    """``primary``'s negatives first, topped up to ``k`` from ``fallback`` (no duplicates)."""
    merged = {}
    for name in dict.fromkeys(list(primary) + list(fallback)):
        combined = list(dict.fromkeys(list(primary.get(name, [])) + list(fallback.get(name, []))))
        merged[name] = [n for n in combined if n != name][:k]
    return merged


# ----------------------------------------------------------------------------- descriptions
def negative_descriptions(negatives: Negatives, descriptions: Mapping[str, str]) -> dict[str, list[str]]:
    """The descriptions of each category's negatives, in the same order (for ``neg_attributes``)."""
    result = {}
    for name, found in negatives.items():
        missing = [n for n in found if not descriptions.get(n, "").strip()]
        if missing:
            raise ValueError(f"category {name!r}: negative {missing[0]!r} has no description")
        result[name] = [descriptions[n] for n in found]
    return result


# ----------------------------------------------------------------------------- FOCI options
def build_option_sets(dataset_records, negatives: Negatives, num_options: int = 4, seed: int = 0,
                      image_key: str | None = None, fill: str = "random") -> dict[str, list[dict]]:
    """FOCI-format multiple-choice option sets for a dataset, from mined hard negatives.

    Returns ``{groundtruth: [{"image": path, "options": [groundtruth, negative, ...], "groundtruth":
    groundtruth}]}``, the format of FOCI's option files: ``options[0]`` is the ground truth and the
    others are its hardest negatives, most similar first (the evaluator shuffles them, seeded).

    Args:
        dataset_records: dicts with ``category`` and an image path (``image`` when it is a string,
            else ``file_name``; or name the key with ``image_key``).
        negatives: ``{category: [negatives, most similar first]}`` from a miner.
        num_options: options per question (FOCI uses 4).
        seed: seeds the choice of filler options when a category has too few mined negatives.
        fill: ``"random"`` tops short lists up with random other categories (counted and logged);
            ``"error"`` raises instead.
    """
    if num_options < 2:
        raise ValueError(f"num_options must be at least 2, got {num_options}")
    if fill not in ("random", "error"):
        raise ValueError(f"fill must be 'random' or 'error', got {fill!r}")
    records = list(dataset_records)
    all_names = sorted(set(negatives) | {r.get("category") for r in records if r.get("category")})
    options_by_category, filled = {}, 0
    option_sets: dict[str, list[dict]] = {}
    for row, record in enumerate(records):
        category = _record_category(record, row)
        if category not in options_by_category:
            options_by_category[category], was_filled = _options_for(category, negatives, all_names, num_options,
                                                                     seed, fill)
            filled += was_filled
        option_sets.setdefault(category, []).append(
            {"image": _record_image_path(record, row, image_key), "options": options_by_category[category],
             "groundtruth": category})
    if filled:
        logger.warning("%d categories had fewer than %d mined negatives and were topped up with random categories",
                       filled, num_options - 1)
    return {name: option_sets[name] for name in sorted(option_sets)}


def _options_for(category: str, negatives: Negatives, all_names: list[str], num_options: int, seed: int,
                 fill: str) -> tuple[list[str], bool]:
    mined = list(dict.fromkeys(negatives.get(category, [])))
    if category in mined:
        raise ValueError(f"category {category!r}: its hard negatives include the category itself")
    needed = num_options - 1
    if len(mined) >= needed:
        return [category] + mined[:needed], False
    others = [n for n in all_names if n != category and n not in mined]
    if fill == "error" or len(mined) + len(others) < needed:
        raise ValueError(f"category {category!r} has only {len(mined) + (len(others) if fill == 'random' else 0)} "
                         f"possible negatives; {needed} are needed for {num_options} options")
    rng = random.Random(f"{seed}:{category}")
    return [category] + mined + rng.sample(others, needed - len(mined)), True


def _record_category(record: dict, row: int) -> str:
    category = record.get("category")
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"record {row}: field 'category' is empty")
    return category


def _record_image_path(record: dict, row: int, image_key: str | None) -> str:
    keys = [image_key] if image_key else ["image", "file_name", "image_path"]
    for key in keys:
        value = record.get(key)
        if isinstance(value, (str, Path)) and str(value):
            return Path(value).as_posix()
        if isinstance(value, dict) and value.get("path"):
            return Path(value["path"]).as_posix()
    raise ValueError(f"record {row}: no image path (looked for field {' / '.join(repr(k) for k in keys)})")
