"""Scoring modes on tiny models: the likelihood mode's one-prefill batching equals a plain per-example
forward, and each mode picks the answer planted in the weights (and only that one)."""

import pytest
import torch
from eval_helpers import BIRDS, COLOURS, bias_lm_head, letter_token, plant_embedding_answer
from PIL import Image

from finedefics_eval.benchmarks import Benchmark
from finedefics_eval.foci import CHOICE_LETTERS, OptionExample, foci_query
from finedefics_eval.scoring import (
    EmbeddingScorer,
    GenerateScorer,
    LikelihoodScorer,
    OpenSetScorer,
    build_scorers,
    encode_prompts,
    prepare_examples,
)


@pytest.fixture(scope="module")
def processor():
    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer

    return build_tiny_processor(build_tiny_tokenizer(BIRDS + ["Tit"]))


def fresh_model(processor, **overrides):
    from modeling_finedefics.tiny import build_tiny_model

    return build_tiny_model(processor, preset="micro", seed=0, **overrides).eval()


def toy_items(count=12, seed=0):
    """Examples whose options differ in length (so prompts need padding), shown in seeded order."""
    examples = []
    for i in range(count):
        truth = BIRDS[i % len(BIRDS)]
        others = [BIRDS[(i + k) % len(BIRDS)] for k in (1, 2, 4)]
        examples.append(OptionExample(str(i), f"{i}.png", truth, [truth, *others]))
    return prepare_examples(examples, foci_query("birds"), seed)


def toy_images(count=12):
    return [Image.new("RGB", (64, 64), COLOURS[i % len(COLOURS)]) for i in range(count)]


@torch.no_grad()
def unbatched_option_scores(model, processor, scorer, image, item):
    """Reference: each option's answer appended to its own unpadded prompt, one full forward each."""
    prompt = encode_prompts(model, processor, [image], [item.prompt])
    length = prompt["input_ids"].shape[1]
    scores = []
    for letter, option in zip(CHOICE_LETTERS, item.shown_options):
        answer = scorer.continuation_ids(letter, option)
        ids = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt["pixel_values"],
                       pixel_attention_mask=prompt.get("pixel_attention_mask")).logits
        log_probs = torch.log_softmax(logits[0].float(), dim=-1)
        scores.append(sum(log_probs[length - 1 + t, token].item() for t, token in enumerate(answer)))
    return scores


@pytest.mark.parametrize("answer", ["letter", "letter_name", "name"])
def test_likelihood_batched_with_one_prefill_equals_plain_forward_per_option(processor, answer):
    model = fresh_model(processor)
    scorer = LikelihoodScorer(model, processor, answer)
    items, images = toy_items(6), toy_images(6)
    assert len({len(encode_prompts(model, processor, [im], [it.prompt])["input_ids"][0])
                for im, it in zip(images, items)}) > 1  # the batch really is padded
    batched = scorer.option_scores(images, items)
    reference = torch.tensor([unbatched_option_scores(model, processor, scorer, im, it)
                              for im, it in zip(images, items)])
    assert torch.allclose(batched, reference, atol=1e-4), (batched - reference).abs().max()


def test_likelihood_answers_follow_the_chat_template(processor):
    scorer = LikelihoodScorer(fresh_model(processor), processor, "letter_name")
    tokens = processor.tokenizer.convert_ids_to_tokens(scorer.continuation_ids("B", "Corvel Tit"))
    assert processor.tokenizer.convert_tokens_to_string(tokens) == " B. Corvel Tit<end_of_utterance>"
    letter = LikelihoodScorer(fresh_model(processor), processor, "letter").continuation_ids("B", "Corvel Tit")
    assert processor.tokenizer.decode(letter) == " B"


@pytest.mark.parametrize("planted", ["C", "A"])
def test_likelihood_picks_the_planted_letter(processor, planted):
    model = fresh_model(processor)
    scorer = LikelihoodScorer(model, processor)
    bias_lm_head(model, letter_token(scorer, planted))
    items = toy_items()
    records = scorer(toy_images(), items)
    assert [r["predicted"] for r in records] == [it.shown_options["ABCD".index(planted)] for it in items]
    hits = sum(r["predicted"] == r["correct"] for r in records)
    assert hits == sum(it.answer_letter == planted for it in items) and 0 < hits < len(items)


def test_generate_reads_the_planted_letter_and_counts_failures(processor):
    model = fresh_model(processor)
    bias_lm_head(model, letter_token(LikelihoodScorer(model, processor), "D"))
    items = toy_items(5)
    records = GenerateScorer(model, processor)(toy_images(5), items)
    assert all(r["predicted_raw"].startswith("D") for r in records)
    assert [r["predicted"] for r in records] == [it.shown_options[3] for it in items]
    failing = fresh_model(processor)
    bias_lm_head(failing, processor.tokenizer(" E", add_special_tokens=False)["input_ids"][0])
    records = GenerateScorer(failing, processor)(toy_images(5), items)
    assert all(r["predicted"].startswith("NA ### E") and r["predicted"] not in r["options"] for r in records)


@pytest.mark.parametrize("planted", ["Corvel Tit", "Mirel Finch"])
def test_embedding_picks_the_planted_category_among_options_and_overall(processor, planted):
    model = fresh_model(processor, text_layers=1)
    plant_embedding_answer(model, processor, planted)
    scorer = EmbeddingScorer(model, processor, BIRDS)
    similarities = scorer.similarities(toy_images(3))
    assert torch.allclose(similarities[:, BIRDS.index(planted)], torch.ones(3), atol=1e-4)
    assert (similarities.argmax(dim=1) == BIRDS.index(planted)).all()
    items = toy_items()
    records = scorer(toy_images(), items)
    with_planted = [(r, it) for r, it in zip(records, items) if planted in it.shown_options]
    assert with_planted and all(r["predicted"] == planted for r, _ in with_planted)
    assert all(r["top5_all"][0] == planted for r in records)
    assert (sum(r["predicted"] == r["correct"] for r in records)
            == sum(it.example.groundtruth == planted for it in items))


def test_open_set_matches_the_named_category_after_normalisation(processor):
    model = fresh_model(processor)
    bias_lm_head(model, processor.tokenizer(" Tit", add_special_tokens=False)["input_ids"][0])
    items = toy_items(4)
    categories = BIRDS + ["Tit"]
    records = OpenSetScorer(model, processor, "What is the species of the bird in the image?", categories,
                            max_new_tokens=1)(toy_images(4), items)
    assert [r["predicted_raw"] for r in records] == ["Tit"] * 4
    assert all(r["predicted"] == "Tit" and r["correct"] == it.example.groundtruth for r, it in zip(records, items))


def test_unknown_or_empty_modes_and_answer_formats_are_clear_errors(processor):
    bench = Benchmark(name="toy", split="test", examples=[it.example for it in toy_items(2)], categories=BIRDS,
                      query="q", open_set_question="q")
    model = fresh_model(processor)
    with pytest.raises(ValueError, match="unknown scoring mode"):
        build_scorers(model, processor, bench, ["beam"])
    with pytest.raises(ValueError, match="unknown scoring mode"):
        build_scorers(model, processor, bench, [])
    with pytest.raises(ValueError, match="unknown likelihood answer format"):
        LikelihoodScorer(model, processor, "sentence")
    with pytest.raises(ValueError, match="must contain"):
        prepare_examples(bench.examples, "q", 0, prompt_template="User:")
