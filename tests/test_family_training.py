"""Training for every model family (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA), with tiny models:
the collator's answer-only labels under each family's chat template, images in each processor's layout, stage I
(LM + three contrastive terms, image embeddings from the same forward) and stage II trainer steps."""

import pytest
import torch
from conftest import TOY_CATEGORIES, TOY_COLOURS, toy_rows
from datasets import Dataset
from PIL import Image

from finedefics_data.prompts import DEFAULT_NOUN, open_set_question
from finedefics_training.collator import IGNORE_INDEX, FinedeficsDataCollator
from finedefics_training.losses import TERMS
from modeling_finedefics.families import FAMILIES

FAMILY_NAMES = list(FAMILIES)
CORPUS = TOY_CATEGORIES + [f"a small bird with {colour} feathers" for colour in TOY_COLOURS] + [
    "What is the species of the bird in the image?", "Which of these birds is shown in the image?"]

# Written here from each family's real chat template, not read back from the processor: what ends the assistant
# prefix, what joins it to the answer, and what closes the answer (LLaVA's template closes nothing: EOS).
ASSISTANT_PREFIX = {"idefics2": "Assistant:", "idefics3": "Assistant:", "smolvlm": "Assistant:",
                    "qwen2_vl": "<|im_start|>assistant\n", "qwen2_5_vl": "<|im_start|>assistant\n",
                    "llava": "ASSISTANT:"}
JOINER = {"idefics2": " ", "idefics3": " ", "smolvlm": " ", "qwen2_vl": "", "qwen2_5_vl": "", "llava": " "}
ANSWER_END = {"idefics2": "<end_of_utterance>", "idefics3": "<end_of_utterance>", "smolvlm": "<end_of_utterance>",
              "qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "llava": "</s>"}


def _build(family, seed=0):
    return FAMILIES[family].build_tiny(CORPUS, seed=seed)


def _rows(n, sizes=((64, 48), (24, 32), (40, 40))):
    """Toy rows whose images differ in size (Qwen: other token counts; Idefics3/SmolVLM: other splits)."""
    rows = toy_rows(n)
    for i, row in enumerate(rows):
        row["image"] = row["image"].resize(sizes[i % len(sizes)])
    return rows


def _supervised(processor, batch, row):
    labels = batch["labels"][row]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX])


def _prompt(processor, batch, row):
    first = int((batch["labels"][row] != IGNORE_INDEX).nonzero()[0])
    return processor.tokenizer.decode(batch["input_ids"][row, :first])


def _image_token_id(model):
    return model.config.image_token_id


def _vision_calls(model):
    calls = []
    model._vision_tower().register_forward_hook(lambda *args: calls.append(1))
    return calls


# ------------------------------------------------------------------------ collator
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_labels_supervise_exactly_the_answer_tokens(family):
    model, processor = _build(family)
    end, joiner, prefix = ANSWER_END[family], JOINER[family], ASSISTANT_PREFIX[family]
    rows = _rows(6)
    rows[1]["attribute"] = ""  # falls back to the open-set name question

    def check(batch, row, answer):
        assert _supervised(processor, batch, row) == joiner + answer + end
        assert _prompt(processor, batch, row).endswith(prefix + joiner.rstrip())
        labels, input_ids = batch["labels"][row], batch["input_ids"][row]
        assert torch.all(labels[input_ids == _image_token_id(model)] == IGNORE_INDEX)
        assert torch.all(labels[batch["attention_mask"][row] == 0] == IGNORE_INDEX)
        assert (input_ids == _image_token_id(model)).sum() > 0  # the image placeholder was expanded in the row

    stage_one = FinedeficsDataCollator(processor, stage=1, num_negatives=2)(rows)
    for row in range(6):
        check(stage_one, row, rows[row]["attribute"] or rows[row]["category"])

    open_set = FinedeficsDataCollator(processor, stage=2, closed_set_ratio=0.0)(rows)
    for row in range(6):
        check(open_set, row, rows[row]["category"])
        assert open_set_question(DEFAULT_NOUN) in _prompt(processor, open_set, row)

    for style in ("letter", "letter_name"):
        choice = FinedeficsDataCollator(processor, stage=2, closed_set_ratio=1.0, multiple_choice_answer=style,
                                        seed=1)(rows)
        letters = set()
        for row in range(6):
            answer = _supervised(processor, choice, row).removesuffix(end).strip()
            letter = answer[0]
            letters.add(letter)
            expected = letter if style == "letter" else f"{letter}. {rows[row]['category']}"
            check(choice, row, expected)
            assert f"{letter}. {rows[row]['category']}" in _prompt(processor, choice, row)  # the letter names it
        assert letters <= set("ABC") and len(letters) > 1


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_only_rows_mix_with_image_rows_in_the_family_image_layout(family):
    model, processor = _build(family)
    text_row = {"image": None, "category": "Corvel Tit", "question": "What does a Corvel Tit look like?",
                "answer": "a small grey bird", "example_id": 7}
    rows = _rows(3)
    batch = FinedeficsDataCollator(processor, stage=2, closed_set_ratio=0.0)([rows[0], text_row, rows[1]])
    assert _supervised(processor, batch, 1) == JOINER[family] + "a small grey bird" + ANSWER_END[family]
    image_tokens = (batch["input_ids"] == _image_token_id(model)).sum(dim=1)
    assert image_tokens[1] == 0 and image_tokens[0] > 0 and image_tokens[2] > 0
    if family.startswith("qwen"):  # flattened patches of two images, never one block per row
        assert batch["pixel_values"].dim() == 2 and batch["image_grid_thw"].shape[0] == 2
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "labels"}).logits).all()
    only_text = FinedeficsDataCollator(processor, stage=2)([text_row, {**text_row, "example_id": 8}])
    assert "pixel_values" not in only_text
    assert _supervised(processor, only_text, 0) == JOINER[family] + "a small grey bird" + ANSWER_END[family]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_images_reach_the_model(family):
    from finedefics_training.trainer import answer_token_nll

    model, processor = _build(family)
    collator = FinedeficsDataCollator(processor, stage=2, closed_set_ratio=0.0)
    rows = _rows(3)
    other = [{**row, "image": Image.new("RGB", row["image"].size, "purple")} for row in rows]

    def lm_loss(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            nll, count, _ = answer_token_nll(model(**inputs).logits, batch["labels"])
        return (nll / count).item()

    first, changed = collator(rows), collator(other)
    assert torch.equal(first["input_ids"], changed["input_ids"]) and torch.equal(first["labels"], changed["labels"])
    assert lm_loss(first) != pytest.approx(lm_loss(changed), abs=1e-6)


# ------------------------------------------------------------------------- trainer
def _trainer(tmp_path, model, processor, rows, **fields):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.trainer import FinedeficsTrainer

    defaults = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", seed=0, num_negatives=2,
                    per_device_train_batch_size=4, dataloader_num_workers=0, disable_tqdm=True, save_strategy="no",
                    max_steps=1, logging_steps=1, learning_rate=1e-2, bf16=False, object_noun="bird")
    args = FinedeficsTrainingConfig(**{**defaults, **fields})
    return FinedeficsTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=processor)


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stage_one_step_trains_lm_and_contrastive_terms_from_one_vision_pass(family, tmp_path):
    from finedefics_training.losses import ContrastiveTexts

    model, processor = _build(family)
    rows = _rows(4)
    trainer = _trainer(tmp_path, model, processor, rows, stage=1)
    batch = trainer.data_collator([dict(row) for row in rows])
    if family != "idefics2":
        assert {"summary_input_ids", "summary_attention_mask"} <= batch.keys()

    # The terms the trainer computes from its one forward are those of images and texts embedded separately.
    model.eval()
    calls = _vision_calls(model)
    with torch.no_grad():
        trainer.compute_loss(model, dict(batch))
        assert len(calls) == 1  # the vision tower ran once for the prompts and the image embeddings
        if family == "idefics2":
            images = model.get_image_embeddings(batch["pixel_values"], batch["pixel_attention_mask"])
        else:
            images = model.get_image_embeddings(**processor.image_embedding_inputs([row["image"] for row in rows]))
        texts = model.get_text_embeddings(batch["contrastive_input_ids"], batch["contrastive_attention_mask"])
        contrastive = ContrastiveTexts.from_batch(batch).embed(images, texts)
        expected = trainer.contrastive_loss(contrastive, model.get_logit_scales())
    logged = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    for name in TERMS:
        assert logged[f"loss_{name}"] == pytest.approx(expected.terms[name].item(), rel=1e-4, abs=1e-6), name
        assert logged[f"skipped_{name}"] == 0

    before = _snapshot(model)
    decoder_weight = model._decoder().layers[0].self_attn.q_proj.weight
    decoder_before = decoder_weight.detach().clone()
    calls.clear()
    trainer.train()
    assert len(calls) == 1  # one training step, one vision pass
    entry = next(entry for entry in trainer.state.log_history if "lm_loss" in entry)
    for key in ["loss", "lm_loss"] + [f"loss_{name}" for name in TERMS]:
        assert torch.isfinite(torch.tensor(entry[key])) and entry[key] > 0, key
    assert entry["loss"] > entry["lm_loss"]
    assert not torch.equal(decoder_weight.detach(), decoder_before), "the decoder did not train"
    after = dict(model.named_parameters())
    for name in ("temperatures.object_attribute", "temperatures.attribute_category"):
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stage_two_step_trains_the_lm_with_frozen_temperatures(family, tmp_path):
    model, processor = _build(family)
    trainer = _trainer(tmp_path, model, processor, _rows(8), stage=2, max_steps=2)
    before = _snapshot(model)
    trainer.train()
    entries = [entry for entry in trainer.state.log_history if "lm_loss" in entry]
    assert len(entries) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in entries)
    assert not any("loss_object_attribute" in entry for entry in trainer.state.log_history)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "temperatures" not in n)
    for name in ("temperatures.object_attribute", "temperatures.attribute_category"):
        assert torch.equal(before[name], after[name]) and not after[name].requires_grad


def _pad(tensor, extra, value, side):
    padding = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype)
    return torch.cat([tensor, padding] if side == "right" else [padding, tensor], dim=1)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_left_or_right_padding_gives_the_same_contrastive_embeddings(family):
    model, processor = _build(family)
    batch = FinedeficsDataCollator(processor, stage=1, num_negatives=2)(_rows(3))
    pad_id = processor.tokenizer.pad_token_id
    groups = [("input_ids", "attention_mask", "mm_token_type_ids"),
              ("summary_input_ids", "summary_attention_mask"),
              ("contrastive_input_ids", "contrastive_attention_mask")]
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "image_grid_thw",
            "mm_token_type_ids", "summary_input_ids", "summary_attention_mask", "contrastive_input_ids",
            "contrastive_attention_mask")
    outputs = {}
    for side in ("right", "left"):
        inputs = {key: batch[key] for key in keys if key in batch}
        for group in groups:  # three extra padding columns on every row, on one side
            for key in group:
                if key in inputs:
                    value = 0 if key.endswith(("attention_mask", "type_ids")) else pad_id
                    inputs[key] = _pad(inputs[key], 3, value, side)
        with torch.no_grad():
            outputs[side] = model(**inputs, use_cache=False)
    assert outputs["left"].image_embeds.shape == (3, model.config.get_text_config().hidden_size)
    torch.testing.assert_close(outputs["left"].image_embeds, outputs["right"].image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["left"].text_embeds, outputs["right"].text_embeds, rtol=0, atol=1e-5)
    # Another image, another embedding: the comparison above is not between constants.
    other = FinedeficsDataCollator(processor, stage=1, num_negatives=2)(
        [{**row, "image": Image.new("RGB", row["image"].size, "purple")} for row in _rows(3)])
    with torch.no_grad():
        changed = model(**{key: other[key] for key in keys if key in other}, use_cache=False).image_embeds
    assert not torch.allclose(changed, outputs["right"].image_embeds, atol=1e-4)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_asks_evaluation_question_token_for_token(family):
    """A stage II multiple-choice row's prompt tokens (image placeholders expanded, BOS rule included) are the
    tokens `finedefics eval` sends for the same image and options: one BOS where the template writes it."""
    from finedefics_data.prompts import LETTERS, multiple_choice_prompt, multiple_choice_query
    from finedefics_eval.scoring import encode_prompts

    model, processor = _build(family)
    row = _rows(1)[0]
    collator = FinedeficsDataCollator(processor, stage=2, closed_set_ratio=1.0, num_negatives=3, seed=0)
    batch = collator([row])
    first_answer = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])
    trained = batch["input_ids"][0, :first_answer].tolist()
    # The options in the order the collator showed them, read back from its prompt.
    shown = processor.tokenizer.decode(trained)
    options = sorted([row["category"], *row["neg_categories"][:3]], key=shown.index)
    asked = encode_prompts(model, processor, [row["image"]],
                           [multiple_choice_prompt(multiple_choice_query(DEFAULT_NOUN), options)])
    asked_ids = asked["input_ids"][0][asked["attention_mask"][0].bool()].tolist()
    assert trained == asked_ids
    bos = processor.tokenizer.bos_token_id
    assert bos is None or trained[:2] != [bos, bos]
    assert LETTERS[options.index(row["category"])] in _supervised(processor, batch, 0)
