"""Hard-negative miners and FOCI option sets."""

import json
import logging
from collections import Counter

import numpy as np
import pytest
from conftest import foci_result_file
from PIL import Image

from finedefics_data import negatives as miners
from finedefics_data.negatives import (
    attribute_similarity,
    build_option_sets,
    confusion_from_predictions,
    merge_negatives,
    mine_by_attributes,
    mine_by_confusion,
    mine_by_embeddings,
)

BIRDS = [
    {"name": "Red Finch", "attributes": {"colour": "red", "bill": "cone", "tail": "notched"}},
    {"name": "Rose Finch", "attributes": {"colour": "pink", "bill": "cone", "tail": "notched"}},
    {"name": "Red Warbler", "attributes": {"colour": "red", "bill": "thin", "tail": "round"}},
    {"name": "Grey Heron", "attributes": {"colour": "grey", "bill": "dagger", "tail": "square"}},
]


def test_attribute_similarity_is_jaccard_over_values():
    assert attribute_similarity({"a": "x", "b": "y"}, {"a": "x", "b": "z"}) == pytest.approx(1 / 3)
    assert attribute_similarity({"wing": ["brown", "white"]}, {"wing": ["white"]}) == pytest.approx(1 / 2)
    assert attribute_similarity({}, {}) == 0.0


def test_mine_by_attributes_orders_by_overlap_and_accepts_json():
    negatives = mine_by_attributes(BIRDS, k=2)
    assert negatives["Red Finch"] == ["Rose Finch", "Red Warbler"]  # 2 shared values, then 1
    assert negatives["Grey Heron"] == ["Red Finch", "Rose Finch"]  # nothing shared: ties keep the given order
    as_json = [{**b, "attributes": json.dumps(b["attributes"])} for b in BIRDS]
    assert mine_by_attributes(as_json, k=2) == negatives
    assert mine_by_attributes({b["name"]: b["attributes"] for b in BIRDS}, k=2) == negatives


def test_a_category_with_no_possible_negative_is_an_error():
    with pytest.raises(ValueError, match="'Red Finch' has no possible negative"):
        mine_by_attributes(BIRDS[:1], k=3)
    with pytest.raises(ValueError, match="'Rose Finch': field 'attributes' is empty"):
        mine_by_attributes([BIRDS[0], {"name": "Rose Finch", "attributes": {}}], k=1)
    with pytest.raises(ValueError, match="more than once"):
        mine_by_attributes([BIRDS[0], BIRDS[0]], k=1)


def test_short_lists_are_logged(caplog):
    with caplog.at_level(logging.WARNING):
        negatives = mine_by_attributes(BIRDS[:2], k=3)
    assert negatives == {"Red Finch": ["Rose Finch"], "Rose Finch": ["Red Finch"]}
    assert "fewer than 3 negatives by attribute overlap" in caplog.text


def test_mine_by_embeddings_uses_cosine_and_category_centroids():
    vectors = {"a": [1.0, 0.0, 0.0], "b": [0.9, 0.1, 0.0], "c": [0.0, 1.0, 0.0], "d": [0.0, 0.2, 1.0]}
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return np.array([vectors[t] for t in texts]) * 5.0  # scale must not matter: cosine

    assert mine_by_embeddings(["a", "b", "c", "d"], embed, k=2, batch_size=3) == {
        "a": ["b", "c"], "b": ["a", "c"], "c": ["d", "b"], "d": ["c", "b"]}  # a: c and d tie at 0, given order
    assert calls == [3, 1]
    # Several inputs per category: the mean of normalised embeddings decides.
    inputs = {"x": ["a", "d"], "y": ["b"], "z": ["c"]}
    negatives = mine_by_embeddings(["x", "y", "z"], embed, k=1, inputs=inputs)
    centroid_x = np.array(vectors["a"]) + np.array(vectors["d"]) / np.linalg.norm(vectors["d"])
    cos = lambda u, v: np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    expected = "y" if cos(centroid_x, vectors["b"]) > cos(centroid_x, vectors["c"]) else "z"
    assert negatives["x"] == [expected]


def test_mine_by_embeddings_rejects_bad_embedders():
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        mine_by_embeddings(["a", "b"], lambda texts: np.zeros((len(texts), 4)), k=1)
    with pytest.raises(ValueError, match="expected \\(2, D\\)"):
        mine_by_embeddings(["a", "b"], lambda texts: np.ones((1, 4)), k=1)
    with pytest.raises(ValueError, match="no embedding inputs for category 'b'"):
        mine_by_embeddings(["a", "b"], lambda texts: np.ones((len(texts), 4)), k=1, inputs={"a": "x"})


def test_finedefics_embedders_plug_into_the_miner(micro_model, tiny_processor):
    names = ["Velmoran Thistlewing", "Ashcombe Reedhopper", "Corvel Tit", "Mirel Finch"]
    text_embed = miners.finedefics_text_embedder(micro_model, tiny_processor)
    embeddings = text_embed(names)
    assert embeddings.ndim == 2 and embeddings.shape[0] == 4
    by_text = mine_by_embeddings(names, text_embed, k=2)
    assert all(len(v) == 2 and n not in v for n, v in by_text.items())
    images = {n: [Image.new("RGB", (64, 64), c)] for n, c in zip(names, ["red", "green", "blue", "yellow"])}
    by_image = mine_by_embeddings(names, miners.finedefics_image_embedder(micro_model, tiny_processor), k=1,
                                  inputs=images)
    assert set(by_image) == set(names)


def test_confusion_counts_both_directions_and_skips_unconfused():
    names = ["a", "b", "c", "d"]
    confusion = confusion_from_predictions(["a", "a", "a", "b", "c", "c", "d"], ["a", "b", "b", "c", "a", "zzz", "d"],
                                           names)
    # "zzz": a failure
    assert confusion[0, 1] == 2 and confusion[1, 2] == 1 and confusion[2, 0] == 1 and confusion.sum() == 6
    negatives = mine_by_confusion(confusion, names, k=3)
    assert negatives["a"] == ["b", "c"]  # a->b twice, c->a once; never confused with d
    assert negatives["c"] == ["a", "b"]  # tie (1 each way): given order
    assert negatives["d"] == []
    with pytest.raises(ValueError, match="negative counts"):
        mine_by_confusion(-np.eye(4), names, k=1)
    with pytest.raises(ValueError, match=r"\(4, 4\) matrix"):
        mine_by_confusion(np.zeros((3, 3)), names, k=1)


def test_confusion_from_a_real_foci_results_file():
    results = json.loads(foci_result_file("bird-200-finedefics-release-run").read_text())
    predictions = results["predictions"]
    names = sorted({p["correct"] for p in predictions} | {o for p in predictions for o in p["options"]})
    confusion = confusion_from_predictions([p["correct"] for p in predictions], [p["predicted"] for p in predictions],
                                           names)
    assert np.trace(confusion) == sum(p["predicted"] == p["correct"] for p in predictions)
    negatives = mine_by_confusion(confusion, names, k=3)
    # Count confusions per unordered pair independently, straight from the prediction list.
    pairs = Counter(frozenset((p["correct"], p["predicted"])) for p in predictions
                    if p["predicted"] != p["correct"] and p["predicted"] in names)
    partners = {name: Counter() for name in names}
    for pair, count in pairs.items():
        a, b = tuple(pair)
        partners[a][b] += count
        partners[b][a] += count
    confused = [name for name in names if partners[name]]
    assert len(confused) > 100
    for name in confused:
        top = max(partners[name].values())
        assert negatives[name][0] in {b for b, n in partners[name].items() if n == top}
        assert all(partners[name][b] > 0 for b in negatives[name])


def test_merge_negatives_tops_up_without_duplicates():
    merged = merge_negatives({"a": ["b"]}, {"a": ["b", "c", "d"], "b": ["a"]}, k=2)
    assert merged == {"a": ["b", "c"], "b": ["a"]}


def test_build_option_sets_is_foci_format_and_fills_short_lists(caplog):
    records = [{"category": "a", "image": "test/1.png"}, {"category": "a", "file_name": "2.png"},
               {"category": "b", "image": {"path": "test/3.png", "bytes": None}},
               {"category": "e", "image": "test/4.png"}]
    negatives = {"a": ["b", "c", "d", "e"], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["a", "b", "c"]}
    with caplog.at_level(logging.WARNING):
        options = build_option_sets(records, negatives, num_options=4, seed=1)
    assert list(options) == ["a", "b", "e"]
    assert options["a"][0] == {"image": "test/1.png", "options": ["a", "b", "c", "d"], "groundtruth": "a"}
    assert options["a"][1]["image"] == "2.png"
    filled = options["b"][0]["options"]
    assert filled[:2] == ["b", "a"] and len(set(filled)) == 4 and "b" not in filled[1:]
    assert "topped up" in caplog.text
    assert build_option_sets(records, negatives, seed=1) == options  # seeded: reproducible
    with pytest.raises(ValueError, match="category 'b' has only 1 possible negatives"):
        build_option_sets(records, negatives, fill="error")
    with pytest.raises(ValueError, match="category 'a' has only 1 possible negatives; 3 are needed"):
        build_option_sets([{"category": "a", "image": "x.png"}], {"a": ["b"]})
    with pytest.raises(ValueError, match="its hard negatives include the category itself"):
        build_option_sets(records, {**negatives, "a": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="record 0: no image path"):
        build_option_sets([{"category": "a"}], negatives)


def test_options_cli_on_a_synthetic_benchmark(tmp_path):
    from finedefics_cli import main
    from finedefics_data.synth import SynthConfig, generate_benchmark

    bench = generate_benchmark(tmp_path / "b", SynthConfig(num_genera=2, species_per_genus=3, train_per_category=2,
                                                           rare_train_per_category=1, test_per_category=2),
                               progress=False)
    out = tmp_path / "options.json"
    assert main(["data", "options", str(bench), "--output", str(out)]) == 0
    mined = json.loads(out.read_text())
    shipped = json.loads((bench / "foci_test.json").read_text())
    assert {k: [e["options"][0] for e in v] for k, v in mined.items()} == {k: [e["options"][0] for e in v]
                                                                           for k, v in shipped.items()}
    assert all((bench / e["image"]).is_file() for v in mined.values() for e in v)
    siblings = {c["name"]: set(c["siblings"]) for c in json.loads((bench / "categories.json").read_text())}
    assert all(set(e["options"][1:3]) == siblings[k] for k, v in mined.items() for e in v)  # 2 siblings first
    assert main(["data", "options", str(bench), "--output", str(out), "--miner", "confusion"]) == 2


def test_a_confusion_file_that_is_not_json_or_not_an_object_is_a_named_error(tmp_path):
    from finedefics_data.option_sets import read_confusion_file

    broken = tmp_path / "confusion.json"
    broken.write_text('{"names": ["a", "b"], "matrix": [[1, 0]')
    with pytest.raises(ValueError, match=f"{broken} is not valid JSON"):
        read_confusion_file(broken)
    broken.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"expected FOCI results"):
        read_confusion_file(broken)
    with pytest.raises(FileNotFoundError, match="--confusion file not found"):
        read_confusion_file(tmp_path / "missing.json")
