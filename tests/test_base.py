"""The demo's base model: dense part targets, vision pre-training that trains vision only, knowledge rows."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finedefics_data.synth import ATTRIBUTES, PARTS, SynthConfig
from finedefics_training.demo.base import MIN_PART_PIXELS, attribute_pool, patch_targets, pretrain_vision


def test_patch_targets_mark_the_patches_that_show_a_part_in_row_major_order():
    parts = np.zeros((16, 16), dtype=np.uint8)  # 2 x 2 patches of 8 px
    beak, body = PARTS.index("beak"), PARTS.index("body")
    parts[1, 9:9 + MIN_PART_PIXELS] = beak  # top-right patch (index 1): enough beak pixels
    parts[12, 1:1 + MIN_PART_PIXELS - 1] = beak  # bottom-left patch (index 2): one pixel too few
    parts[10:14, 10:14] = body  # bottom-right patch (index 3)
    visible = {"beak": ATTRIBUTES["beak"][2], "build": ATTRIBUTES["build"][1]}  # plumage hidden (occluded)
    targets = patch_targets(parts, visible, patch_size=8)
    names = list(ATTRIBUTES)
    assert targets.shape == (4, len(names))
    assert targets[1, names.index("beak")] == 2 and targets[2, names.index("beak")] == -100
    assert targets[3, names.index("build")] == 1
    assert (targets[:, names.index("plumage")] == -100).all()  # shown by the body, but hidden: not supervised
    assert (targets[0] == -100).all()  # background only


def test_vision_pre_training_trains_vision_and_resampler_only(micro_checkpoint, tmp_path):
    before = load_file(micro_checkpoint / "model.safetensors")
    pool = attribute_pool(48, SynthConfig(), patch_size=8)
    accuracy = pretrain_vision(micro_checkpoint, tmp_path / "vision", pool, ATTRIBUTES, steps=6, batch_size=8,
                               learning_rate=2e-3, seed=0)
    after = load_file(micro_checkpoint / "model.safetensors")
    assert set(accuracy) <= set(ATTRIBUTES) and all(0.0 <= value <= 1.0 for value in accuracy.values())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".vision_model." in name for name in changed)
    assert any(".connector." in name for name in changed)
    assert not any(".text_model." in name or name.startswith("lm_head") for name in changed), sorted(changed)[:5]


def test_attribute_pool_is_seeded_by_index():
    first = attribute_pool(3, SynthConfig(), start=10)
    again = attribute_pool(2, SynthConfig(), start=11)
    assert first.captions[1:] == again.captions
    assert np.array_equal(np.asarray(first.images[2]), np.asarray(again.images[1]))
    assert first.patch_targets is None


if __name__ == "__main__":
    pytest.main([__file__])


def test_the_shipped_base_is_the_default_plans_and_its_weights_match_the_record():
    """Changing a base field of the default plan or the benchmark's defaults requires rebuilding the shipped base."""
    import json
    from dataclasses import asdict

    from finedefics_training import demo
    from modeling_finedefics import FinedeficsConfig

    recipe = demo.base_recipe(demo.default_plan(), {"synthetic": asdict(SynthConfig())})
    folder = demo.shipped_base_for(recipe)
    assert folder is not None, "the shipped base was built from another recipe: run `finedefics demo --rebuild-base`"
    build = json.loads((folder / demo.BUILD_FILE).read_text())
    assert demo.weights_digest(folder) == build["sha256"]
    assert FinedeficsConfig.from_pretrained(folder).object_noun == "bird"


def _synthetic_categories():
    from finedefics_data.synth import build_categories

    categories = build_categories(SynthConfig())
    negatives = {c["name"]: list(c["siblings"]) for c in categories}
    return categories, negatives


def test_category_choices_are_foci_prompts_over_siblings_answered_by_the_right_letter():
    from finedefics_data.prompts import ObjectNoun, multiple_choice_options
    from finedefics_data.synth import parse_description
    from finedefics_training.demo.base import category_choice_rows

    categories, negatives = _synthetic_categories()
    by_name = {c["name"]: c for c in categories}
    rows = category_choice_rows(categories, negatives, ObjectNoun.of("bird"), 400, seed=0, lookup_share=0.5)
    assert len(rows) == 400 and rows == category_choice_rows(categories, negatives, ObjectNoun.of("bird"), 400)
    named = described = 0
    for row in rows:
        options = multiple_choice_options(row["question"])
        assert options[row["answer"]] == row["category"]  # the answer letter points at the row's category
        assert set(options.values()) == {row["category"], *negatives[row["category"]][:3]}
        stem = row["question"].split("\n")[0]
        if stem == f"Which of these is {row['category']}?":
            named += 1
        else:  # a description of the category: every attribute it states is the category's
            described += 1
            stated = parse_description(stem)
            assert stated and all(by_name[row["category"]]["attributes"][k] == v for k, v in stated.items())
    assert 150 < named < 250 and described == 400 - named
    assert {row["answer"] for row in rows} == set("ABCD")
    assert any(by_name[row["category"]]["is_rare"] for row in rows)  # rare categories are asked too


def test_the_premise_asks_with_a_wording_the_choice_rows_never_use():
    from finedefics_data.prompts import ObjectNoun, reverse_knowledge_question
    from finedefics_training.demo.base import category_choice_rows, held_out_description

    categories, negatives = _synthetic_categories()
    rows = category_choice_rows(categories, negatives, ObjectNoun.of("bird"), 2000, seed=3, lookup_share=0.0)
    stems = {row["question"].split("\n")[0] for row in rows}
    held_out = {reverse_knowledge_question(ObjectNoun.of("bird"), held_out_description(c)) for c in categories}
    assert not stems & held_out
    assert held_out_description(categories[0]) == held_out_description(dict(categories[0]))  # seeded by name


def test_word_lookups_name_their_answer():
    from finedefics_data.prompts import multiple_choice_options
    from finedefics_training.demo.base import word_lookup_rows

    rows = word_lookup_rows(["alder", "brook", "cress", "fen", "heath", "marsh"], 50, seed=1)
    for row in rows:
        options = multiple_choice_options(row["question"])
        assert len(options) == 4 and row["question"].startswith(f"Which of these is {options[row['answer']]}?")
    assert len({row["answer"] for row in rows}) == 4
