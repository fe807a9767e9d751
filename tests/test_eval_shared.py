"""Scoring modes run together share each batch's image work (vision tower + connector once, the letter
likelihood read from generate's prefill) and still predict exactly what each mode predicts alone."""

import time

import pytest
import torch
from eval_helpers import BIRDS, COLOURS
from PIL import Image

from finedefics_eval.benchmarks import Benchmark
from finedefics_eval.foci import OptionExample, foci_query
from finedefics_eval.runner import _timed_call, evaluate_model
from finedefics_eval.scoring import (
    EmbeddingScorer,
    GenerateScorer,
    LikelihoodScorer,
    SharedBatch,
    prepare_examples,
)

TIMING_KEYS = {"seconds", "images_per_second", "category_cache_seconds"}


@pytest.fixture(scope="module")
def processor():
    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer

    return build_tiny_processor(build_tiny_tokenizer(BIRDS))


@pytest.fixture(scope="module")
def model(processor):
    from modeling_finedefics.tiny import build_tiny_model

    # A random model whose predictions differ between examples in every mode (checked below), so that a
    # mix-up of rows or of prompts between modes changes them. (Its likelihood letter barely depends on the
    # image; the scorer-level test below compares the scores themselves.)
    return build_tiny_model(processor, preset="micro", seed=0).eval()


def colour_benchmark(count: int = 13) -> Benchmark:
    """An in-memory 4-way benchmark; options of different lengths, so that prompts are padded."""
    images, examples = {}, []
    for index in range(count):
        label = index % len(BIRDS)
        options = [BIRDS[(label + k) % len(BIRDS)] for k in (0, 1, 2, 4)]
        examples.append(OptionExample(str(index), f"{index}.png", options[0], options))
        images[str(index)] = Image.new("RGB", (64, 64), COLOURS[(index * 5) % len(COLOURS)])
    return Benchmark(name="colours", split="test", examples=examples, categories=list(BIRDS),
                     query=foci_query("birds"), open_set_question="What is the species of the bird in the image?",
                     image_getter=lambda example: images[example.example_id])


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}


@pytest.mark.parametrize("modes, likelihood_answer", [
    (("generate", "likelihood", "embedding", "open_set"), "letter"),  # letter scores read from generate's prefill
    (("likelihood", "generate"), "letter_name"),  # multi-token answers: image features shared, own prefill
])
def test_modes_together_predict_exactly_what_each_mode_alone_predicts(processor, model, modes, likelihood_answer):
    benchmark = colour_benchmark()  # 13 examples in batches of 5: the last batch is short
    options = dict(batch_size=5, likelihood_answer=likelihood_answer, bootstrap_samples=20, progress=False, seed=3)
    together = evaluate_model(model, processor, benchmark, modes=modes, **options)
    assert list(together["modes"]) == list(modes) == list(together["predictions"])
    for mode in modes:
        alone = evaluate_model(model, processor, benchmark, modes=(mode,), **options)
        assert together["predictions"][mode] == alone["predictions"][mode], mode
        assert without_timing(together["modes"][mode]) == without_timing(alone["modes"][mode]), mode
        assert together["modes"][mode]["seconds"] > 0 and together["modes"][mode]["images_per_second"] > 0
    for mode, records in together["predictions"].items():  # predictions differ between examples in every mode
        assert len(records) == len(benchmark) and len({record["predicted"] for record in records}) > 1, mode


class CallCounter:
    """Counts forward calls of a module."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.calls += 1


def test_a_shared_batch_encodes_images_once_and_likelihood_reads_generates_prefill(processor):
    from modeling_finedefics.tiny import build_tiny_model

    model = build_tiny_model(processor, preset="micro", seed=0).eval()  # its own: hooks stay on it
    vision, decoder = CallCounter(model.model.vision_model), CallCounter(model.model.text_model)
    benchmark = colour_benchmark(6)
    items = prepare_examples(benchmark.examples, benchmark.query, seed=0)
    images = [benchmark.load_image(item.example) for item in items]
    generate, likelihood = GenerateScorer(model, processor), LikelihoodScorer(model, processor)
    embedding = EmbeddingScorer(model, processor, BIRDS)
    decoder.calls = 0

    shared = SharedBatch(model, processor, images, keep_prompt_logits=True)
    generated = generate(images, items, shared=shared)
    decoder_calls_of_generate = decoder.calls
    shared_scores = likelihood.option_scores(images, items, shared)
    assert decoder.calls == decoder_calls_of_generate  # no prefill of its own
    shared_similarities = embedding.similarities(images, shared)
    assert vision.calls == 1  # one vision pass for the three modes
    assert decoder.calls == decoder_calls_of_generate + 1  # the embedding's image-summary pass

    alone_scores = likelihood.option_scores(images, items)
    assert vision.calls == 2 and decoder.calls == decoder_calls_of_generate + 2  # alone: its own of each
    assert (alone_scores[1:] - alone_scores[0]).abs().max() > 1e-3  # rows differ: a mix-up would show
    assert torch.allclose(shared_scores, alone_scores, atol=1e-5), (shared_scores - alone_scores).abs().max()
    assert torch.allclose(shared_similarities, embedding.similarities(images), atol=1e-5)
    assert generated == generate(images, items)


def test_each_mode_is_charged_the_shared_work_it_used_whoever_did_it():
    class CpuModel:
        device = torch.device("cpu")

    def slow_piece():
        time.sleep(0.05)
        return "features"

    def scorer(images, items, shared):
        shared._piece("image_features", slow_piece)
        return [{"image": item} for item in items]

    def scorer_without_images(images, items, shared):
        return [{"image": item} for item in items]

    shared = SharedBatch(CpuModel(), processor=None, images=["image"])
    first_records, first_seconds = _timed_call(scorer, ["image"], ["item"], shared)
    second_records, second_seconds = _timed_call(scorer, ["image"], ["item"], shared)
    _, unrelated_seconds = _timed_call(scorer_without_images, ["image"], ["item"], shared)
    piece_seconds = shared.seconds["image_features"]
    assert first_records == second_records == [{"image": "item"}]
    assert piece_seconds >= 0.05
    assert first_seconds >= piece_seconds and second_seconds >= piece_seconds  # the second did not compute it
    assert unrelated_seconds < piece_seconds
