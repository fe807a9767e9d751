"""The training collator: chat formatting, answer-only labels, seeded multiple choice, contrastive text batches."""

import pytest
import torch
from PIL import Image

from finedefics_training.collator import (
    IGNORE_INDEX,
    FinedeficsDataCollator,
    multiple_choice_prompt,
    stable_category_id,
)


def _example(i, category="Velmoran Thistlewing", attribute="a small bird with a red crown", negatives=None):
    negatives = negatives if negatives is not None else ["Velmoran Ashwing", "Corvel Tit", "Ashcombe Reedhopper"]
    return {
        "image": Image.new("RGB", (64, 64), (30 * i % 255, 80, 120)),
        "category": category,
        "attribute": attribute,
        "neg_categories": negatives,
        "neg_attributes": [f"a bird like number {j}" for j in range(len(negatives))],
        "example_id": i,
    }


def _supervised_text(processor, batch, row):
    labels = batch["labels"][row]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX])


def test_stage_one_supervises_only_the_attribute_description(tiny_processor):
    batch = FinedeficsDataCollator(tiny_processor, stage=1)([_example(0), _example(1, attribute="")])
    assert _supervised_text(tiny_processor, batch, 0) == " a small bird with a red crown<end_of_utterance>"
    # A row without a description falls back to naming the bird: nothing is dropped.
    assert _supervised_text(tiny_processor, batch, 1) == " Velmoran Thistlewing<end_of_utterance>"
    image_token = tiny_processor.image_token_id
    assert torch.all(batch["labels"][batch["input_ids"] == image_token] == IGNORE_INDEX)
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)


def test_stage_two_multiple_choice_uses_hard_negatives_in_a_seeded_order(tiny_processor):
    examples = [_example(i) for i in range(12)]
    collator = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=3)
    batch = collator(examples)
    again = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=3)(examples)
    other_seed = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=4)(examples)
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert not torch.equal(batch["input_ids"], other_seed["input_ids"])
    letters = {_supervised_text(tiny_processor, batch, row).split("<")[0].strip() for row in range(12)}
    assert letters <= set("ABCD") and len(letters) > 1  # the right answer is not always in one place
    text = tiny_processor.tokenizer.decode(batch["input_ids"][0])
    for name in ["Velmoran Thistlewing", "Velmoran Ashwing", "Corvel Tit", "Ashcombe Reedhopper"]:
        assert name in text
    # The supervised letter points at the true category.
    letter = _supervised_text(tiny_processor, batch, 0).split("<")[0].strip()
    assert f"{letter}. Velmoran Thistlewing" in text


def test_multiple_choice_prompt_matches_the_foci_layout():
    prompt = multiple_choice_prompt("Which of these birds is shown in the image?", ["w", "x", "y", "z"])
    assert prompt == (
        "Which of these birds is shown in the image?\nChoices:\nA. w\nB. x\nC. y\nD. z\n"
        "Answer with the letter from the given choices directly."
    )


def test_contrastive_texts_are_deduplicated_into_one_batch(tiny_processor):
    examples = [_example(0), _example(1), _example(2, category="Corvel Tit", negatives=["Velmoran Thistlewing"])]
    batch = FinedeficsDataCollator(tiny_processor, stage=1, num_negatives=3)(examples)
    texts = tiny_processor.tokenizer.batch_decode(batch["contrastive_input_ids"], skip_special_tokens=True)
    assert len(texts) == len(set(texts))  # one row per distinct text
    assert batch["category_index"][0] == batch["category_index"][1]
    assert batch["neg_category_index"][2, 0] == batch["category_index"][0]  # a negative that is another row's category
    assert torch.equal(batch["neg_category_index"][2, 1:], torch.tensor([-1, -1]))  # padding
    assert batch["category_ids"][0] == batch["category_ids"][1] == stable_category_id("Velmoran Thistlewing")
    assert batch["neg_attribute_index"].shape == (3, 3)


def test_empty_category_missing_image_and_text_only_stage_one_are_clear_errors(tmp_path, tiny_processor):
    collator = FinedeficsDataCollator(tiny_processor, stage=1)
    with pytest.raises(ValueError, match="example 0: field 'category' is empty"):
        collator([_example(0, category=" ")])
    missing = _example(1)
    missing["image"] = str(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="example 1: image file not found: .*gone.png"):
        collator([missing])
    no_image = _example(2)
    no_image["image"] = None
    with pytest.raises(ValueError, match="field 'image' is missing"):
        collator([no_image])


def test_text_only_instruction_rows_mix_with_image_rows(tiny_processor):
    text_row = {"image": None, "category": "Corvel Tit", "question": "What does a Corvel Tit look like?",
                "answer": "a small grey bird", "example_id": 7}
    batch = FinedeficsDataCollator(tiny_processor, stage=2)([_example(0), text_row])
    assert _supervised_text(tiny_processor, batch, 1) == " a small grey bird<end_of_utterance>"
    assert (batch["input_ids"][1] == tiny_processor.image_token_id).sum() == 0


def test_a_batch_of_text_only_rows_has_no_pixel_values(tiny_processor):
    rows = [{"image": None, "category": "Corvel Tit", "question": "What does a Corvel Tit look like?",
             "answer": "a small grey bird", "example_id": i} for i in range(2)]
    batch = FinedeficsDataCollator(tiny_processor, stage=2)(rows)
    assert "pixel_values" not in batch
    assert _supervised_text(tiny_processor, batch, 0) == " a small grey bird<end_of_utterance>"
