"""The word for one category of the objects ("species" of a bird, "model" of a car), recorded beside the noun
and asked through the one prompt source; the synthetic demo's questions stay byte for byte what its shipped
base model was trained on."""

import json

import pytest

from finedefics_data.prompts import (
    CATEGORY_WORD_FIELD,
    ObjectNoun,
    describe_instruction,
    multiple_choice_query,
    open_set_question,
)
from finedefics_training.demo.premise import attribute_words, description_words


def test_the_synthetic_birds_questions_are_unchanged():
    """The shipped demo base was trained on these exact strings."""
    bird = ObjectNoun.of("bird")
    assert open_set_question(bird) == "What is the species of the bird in the image?"
    assert describe_instruction(bird) == "Describe the attributes of the bird in the image."
    assert multiple_choice_query(bird) == "Which of these birds is shown in the image?"


def test_the_synthetic_corpus_and_the_stage_two_prompt_ask_about_species():
    from finedefics_data.synth.corpus import _instruction_texts
    from finedefics_training.collator import FinedeficsDataCollator

    assert "What is the species of the bird in the image?" in _instruction_texts([{"name": "Ardran Thistledart"}])
    collator = FinedeficsDataCollator(processor=None, stage=2, noun="bird", closed_set_ratio=0.0)
    row = {"image": object(), "category": "Ardran Thistledart", "neg_categories": []}
    assert collator._conversation(row, 0) == ("What is the species of the bird in the image?", "Ardran Thistledart")


@pytest.mark.parametrize("noun, question", [
    ("bird", "What is the species of the bird in the image?"),
    ("car", "What is the model of the car in the image?"),
    ("vehicle", "What is the model of the vehicle in the image?"),
    ("aircraft", "What is the variant of the aircraft in the image?"),
    ("dog", "What is the breed of the dog in the image?"),
    ("pet", "What is the breed of the pet in the image?"),
    ("flower", "What is the species of the flower in the image?"),
    ("food", "What is the dish of the food in the image?"),
])
def test_each_of_the_papers_domains_has_its_word(noun, question):
    assert open_set_question(ObjectNoun.of(noun)) == question


def test_a_given_word_wins_and_travels_through_config_fields():
    noun = ObjectNoun.of("flower", category_word="variety")
    assert open_set_question(noun) == "What is the variety of the flower in the image?"
    assert noun.config_fields()[CATEGORY_WORD_FIELD] == "variety"
    assert ObjectNoun.from_config(noun.config_fields()) == noun
    with pytest.raises(ValueError, match="category word"):
        ObjectNoun.of("car", category_word=" ")


def test_a_checkpoint_without_a_word_keeps_the_question_it_was_trained_with():
    """Before the word was recorded every checkpoint was trained on "What is the species of ...?"."""
    old = ObjectNoun.from_config({"object_noun": "car", "object_noun_plural": "cars"})
    assert open_set_question(old) == "What is the species of the car in the image?"


def test_data_csv_records_the_word_and_training_reads_it(tmp_path, capsys):
    from PIL import Image

    from finedefics_cli import main
    from finedefics_data.schema import DATA_INFO_FILE, data_noun
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import DataArguments, with_data_noun

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.png")
    (tmp_path / "train.csv").write_text("question,answer,type,image_path,attribute,neg_attribute,category,"
                                        "neg_category\nDescribe it.,a red rose.,single-image,a.png,a red rose.,,"
                                        "Rose,\n")
    out = tmp_path / "ds"
    assert main(["data", "csv", str(tmp_path / "train.csv"), "--image-root", str(tmp_path / "images"), "--noun",
                 "flower", "--category-word", "variety", "--output", str(out)]) == 0
    assert "open-set question: 'What is the variety of the flower in the image?'" in capsys.readouterr().out
    assert json.loads((out / DATA_INFO_FILE).read_text())[CATEGORY_WORD_FIELD] == "variety"
    assert data_noun(out).category_word == "variety"
    args = with_data_noun(FinedeficsTrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False),
                          DataArguments(dataset_dir=str(out)))
    assert args.object_category_word == "variety"


def test_the_category_word_needs_a_noun(capsys):
    from finedefics_cli import main

    assert main(["data", "csv", "x.csv", "--image-root", ".", "--category-word", "breed"]) == 2
    assert "--category-word needs --noun" in capsys.readouterr().err


def test_the_premise_scores_only_the_datas_attribute_words():
    """Template words every description holds ("car", "body", "with") are no attributes of the user's data."""
    descriptions = ["a red car body with a flat roof.", "a blue car body with a curved roof."]
    vocabulary = attribute_words(descriptions, ObjectNoun.of("car"))
    assert vocabulary == {"red", "blue", "flat", "curved"}
    assert description_words("a vehicle body, red, flat roof", vocabulary) == {"red": "red", "flat": "flat"}


def test_a_test_image_without_its_own_description_is_scored_against_its_categorys():
    """A test split read from an image folder has labels only: the premise scores the base's description of such
    an image against its category's description, and counts which reference each image got (none: not scored)."""
    from finedefics_training.demo.premise import reference_description

    categories = [{"name": "Halden Rook", "description": "a blue car with a curved roof."},
                  {"name": "Ostra Vela", "description": ""}]
    assert reference_description({"category": "Halden Rook", "attribute": ""}, categories) == \
        "a blue car with a curved roof."
    assert reference_description({"category": "Halden Rook", "attribute": "a blue car."}, categories) == "a blue car."
    assert reference_description({"category": "Ostra Vela", "attribute": None}, categories) == ""
    assert reference_description({"category": "Unknown"}, categories) == ""
