"""Evaluation on every model family (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA), tiny random models:
every scoring mode runs and writes FOCI records, and each mode's answer is what the model itself gives when
asked independently (summed log-probabilities, plain greedy generate, cosine similarities of the embeddings),
classify and the image-text-to-text pipeline agree with it, and saved checkpoints load and evaluate."""

import pytest
import torch
from eval_helpers import BIRDS, small_synthetic_benchmark
from PIL import Image
from transformers import pipeline

from finedefics_eval.foci import CHOICE_LETTERS, OptionExample, foci_query
from finedefics_eval.scoring import (
    EmbeddingScorer,
    GenerateScorer,
    LikelihoodScorer,
    OpenSetScorer,
    SharedBatch,
    chat_prompts,
    encode_prompts,
    prepare_examples,
)
from modeling_finedefics.families import FAMILIES

FAMILY_NAMES = list(FAMILIES)
CORPUS = BIRDS + ["Which of these birds is shown in the image?", "What is the species of the bird in the image?"]
FOCI_KEYS = {"image", "predicted", "predicted_raw", "correct", "options"}
# What each family's chat template writes after its generation prompt for the answer "B. Corvel Tit".
LETTER_NAME_ANSWERS = {"idefics2": " B. Corvel Tit<end_of_utterance>", "idefics3": " B. Corvel Tit<end_of_utterance>",
                       "smolvlm": " B. Corvel Tit<end_of_utterance>", "qwen2_vl": "B. Corvel Tit<|im_end|>",
                       "qwen2_5_vl": "B. Corvel Tit<|im_end|>", "llava": " B. Corvel Tit"}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_model(request):
    model, processor = FAMILIES[request.param].build_tiny(CORPUS, seed=0)
    return request.param, model.eval(), processor


def toy_items(count=4):
    """Examples whose options differ in length (so prompts are padded), in seeded order."""
    examples = []
    for i in range(count):
        options = [BIRDS[(i + k) % len(BIRDS)] for k in (0, 1, 2, 4)]
        examples.append(OptionExample(str(i), f"{i}.png", options[0], options))
    return prepare_examples(examples, foci_query("birds"), seed=0)


def toy_images(count=4):
    """Images of different sizes and contents: Qwen gives them different token counts, Idefics3 other splits."""
    sizes = [(64, 48), (24, 32), (64, 64), (40, 24)]
    images = []
    for i in range(count):
        pixels = torch.randint(0, 256, (sizes[i % 4][1], sizes[i % 4][0], 3),
                               generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        images.append(Image.fromarray(pixels.numpy(), "RGB"))
    return images


def single_prompt_inputs(model, processor, family, image, text):
    """One unpadded prompt (the chat template, the image in the family's layout) as the processor encodes it."""
    return encode_prompts(model, processor, [image], [text])


# ------------------------------------------------------------------------------------- every mode, end to end
@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    return small_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "synth")


def test_every_mode_runs_on_a_synthetic_benchmark_and_writes_foci_records(family_model, synthetic_folder):
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.runner import evaluate_model

    family, model, processor = family_model
    bench = load_benchmark(str(synthetic_folder), limit=4)
    modes = ("generate", "likelihood", "embedding", "open_set")
    options = dict(seed=3, batch_size=3, bootstrap_samples=10, progress=False)  # batches of 3 and 1
    report = evaluate_model(model, processor, bench, modes=modes, **options)
    assert list(report["modes"]) == list(modes) and report["n_scored"] == len(bench) == 4
    for mode in modes:
        records = report["predictions"][mode]
        assert len(records) == 4, mode
        for record, example in zip(records, bench.examples):
            assert FOCI_KEYS <= set(record), (mode, record)
            assert record["correct"] == example.groundtruth and sorted(record["options"]) == sorted(example.options)
            if mode in ("likelihood", "embedding"):  # no decoding: always one of the options
                assert record["predicted"] in record["options"]
        assert 0 <= report["modes"][mode]["accuracy"] <= 1 and report["modes"][mode]["seconds"] > 0
    # Run together (generate's prefill read by the letter likelihood), the likelihood predicts what it does alone.
    alone = evaluate_model(model, processor, bench, modes=("likelihood",), **options)
    assert alone["predictions"]["likelihood"] == report["predictions"]["likelihood"], family


# ------------------------------------------------------------------------------------------------ likelihood
def test_likelihood_scores_are_the_models_summed_log_probabilities(family_model):
    """Both answer formats: the letter (read from the prefill) and the letter with the name up to the end of the
    turn (the cached second pass), against one full forward of prompt + answer per option, unpadded."""
    family, model, processor = family_model
    items, images = toy_items(3), toy_images(3)
    letter_scorer, name_scorer = LikelihoodScorer(model, processor, "letter"), LikelihoodScorer(model, processor,
                                                                                               "letter_name")
    batched = {"letter": letter_scorer.option_scores(images, items),  # padded batch: one prefill (+ cached pass)
               "letter_name": name_scorer.option_scores(images, items)}
    lengths = {single_prompt_inputs(model, processor, family, im, it.prompt)["input_ids"].shape[1]
               for im, it in zip(images, items)}
    assert len(lengths) > 1  # the batch really is padded

    def answer_text(letter, option):  # the answer as the family's template writes it
        return LETTER_NAME_ANSWERS[family].replace("B. Corvel Tit", f"{letter}. {option}")

    name_text = answer_text("B", "Corvel Tit")
    letter_text = name_text[: name_text.index("B") + 1]  # " B" or "B"
    assert processor.tokenizer.decode(letter_scorer.continuation_ids("B", "Corvel Tit")) == letter_text
    assert processor.tokenizer.decode(name_scorer.continuation_ids("B", "Corvel Tit")) == name_text

    reference = {answer: torch.zeros_like(scores) for answer, scores in batched.items()}
    with torch.no_grad():
        for row, (image, item) in enumerate(zip(images, items)):
            prompt = chat_prompts(processor, [item.prompt])[0]
            prompt_ids = single_prompt_inputs(model, processor, family, image, item.prompt)["input_ids"][0]
            start = len(prompt_ids)
            for column, (letter, option) in enumerate(zip(CHOICE_LETTERS, item.shown_options)):
                full = prompt + answer_text(letter, option)  # tokenised with the prompt in one piece
                inputs = processor(images=processor.images_per_text([image]), text=[full], return_tensors="pt",
                                   **processor.chat_text_kwargs([full]))
                ids = inputs["input_ids"][0]
                assert torch.equal(ids[:start], prompt_ids)
                assert processor.tokenizer.decode(ids[start]).strip() == letter  # the letter is a token of its own
                log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
                reference["letter"][row, column] = log_probs[start - 1, ids[start]]
                reference["letter_name"][row, column] = sum(log_probs[t - 1, ids[t]] for t in range(start, len(ids)))
    for answer, scorer in (("letter", letter_scorer), ("letter_name", name_scorer)):
        torch.testing.assert_close(batched[answer], reference[answer], rtol=0, atol=2e-4, msg=answer)
        assert (reference[answer][:, 1:] - reference[answer][:, :1]).abs().max() > 1e-3  # options differ
        best = reference[answer].argmax(dim=1).tolist()
        records = scorer(images, items)
        assert [r["predicted"] for r in records] == [it.shown_options[b] for it, b in zip(items, best)], answer


# -------------------------------------------------------------------------------------------------- generate
@torch.no_grad()
def test_generate_mode_is_plain_greedy_generate_on_the_same_prompt(family_model):
    family, model, processor = family_model
    items, images = toy_items(3), toy_images(3)
    records = GenerateScorer(model, processor, max_new_tokens=6)(images, items)  # batched, left-padded
    for record, image, item in zip(records, images, items):
        inputs = single_prompt_inputs(model, processor, family, image, item.prompt)
        out = model.generate(**inputs, do_sample=False, max_new_tokens=6,
                             pad_token_id=processor.tokenizer.pad_token_id)
        plain = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert record["predicted_raw"] == plain, family
    # Open-set: the same greedy answer to its own question.
    question = "What is the species of the bird in the image?"
    open_records = OpenSetScorer(model, processor, question, BIRDS, max_new_tokens=6)(images, items)
    inputs = single_prompt_inputs(model, processor, family, images[1], question)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=6, pad_token_id=processor.tokenizer.pad_token_id)
    assert open_records[1]["predicted_raw"] == processor.decode(out[0, inputs["input_ids"].shape[1]:],
                                                                skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if name != "idefics2"])
@torch.no_grad()
def test_family_classes_generate_what_the_stock_classes_generate(family):
    """Batched, left-padded: generate needs the stock forward's arguments in the Finedefics forward's signature
    (position ids from the padding, Qwen's 3-D positions, pixels accepted)."""
    model, processor = FAMILIES[family].build_tiny(CORPUS, seed=0)
    stock, _ = FAMILIES[family].build_tiny(CORPUS, seed=0, stock=True)
    inputs = encode_prompts(model, processor, toy_images(3), [it.prompt for it in toy_items(3)])
    assert (inputs["attention_mask"] == 0).any()
    options = dict(do_sample=False, max_new_tokens=5, pad_token_id=processor.tokenizer.pad_token_id)
    assert torch.equal(model.generate(**inputs, **options), stock.generate(**inputs, **options))


# ------------------------------------------------------------------------------------------------- embedding
@torch.no_grad()
def test_embedding_mode_is_the_argmax_of_cosine_similarities_and_agrees_with_classify(family_model):
    family, model, processor = family_model
    items, images = toy_items(), toy_images()
    scorer = EmbeddingScorer(model, processor, BIRDS)
    records = scorer(images, items)
    image_embeds = model.get_image_embeddings(**processor.image_embedding_inputs(images)).float()
    label_embeds = model.embed_labels(BIRDS, processor)
    cosine = torch.nn.functional.cosine_similarity(image_embeds[:, None], label_embeds[None], dim=-1)
    for record, item, row in zip(records, items, cosine):
        option_scores = row[[BIRDS.index(option) for option in item.shown_options]]
        assert record["predicted"] == item.shown_options[int(option_scores.argmax())]
        assert record["top5_all"] == [BIRDS[i] for i in row.topk(5).indices.tolist()]
    assert (cosine[1:] - cosine[0]).abs().max() > 1e-4  # the images matter: a row mix-up would show
    assert torch.allclose(scorer.similarities(images).float(), cosine, atol=1e-5)
    classified = model.classify(images, BIRDS, processor, top_k=5)
    assert classified.labels == [record["top5_all"] for record in records]


# ------------------------------------------------------------------------------------------------- pipeline
@torch.no_grad()
def test_image_text_to_text_pipeline_answers_what_the_generate_mode_answers(family_model):
    family, model, processor = family_model
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    items, images = toy_items(2)[1:], toy_images(2)[1:]
    records = GenerateScorer(model, processor, max_new_tokens=6)(images, items)
    for record, image, item in zip(records, images, items):
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": item.prompt}]}]
        chat = pipe(text=messages, max_new_tokens=6, do_sample=False)
        assert chat[0]["generated_text"][-1]["content"].strip() == record["predicted_raw"], family
        prompt = chat_prompts(processor, [item.prompt])[0]
        plain = pipe(images=[image], text=prompt, max_new_tokens=6, do_sample=False, return_full_text=False)
        assert plain[0]["generated_text"].strip() == record["predicted_raw"], family


# ------------------------------------------------------------------------------------------ shared batch work
def test_shared_batch_reuses_generates_prefill_for_the_letter_likelihood(family_model):
    family, model, processor = family_model
    items, images = toy_items(3), toy_images(3)
    likelihood = LikelihoodScorer(model, processor)
    shared = SharedBatch(model, processor, images, keep_prompt_logits=True)
    GenerateScorer(model, processor, max_new_tokens=2)(images, items, shared=shared)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        shared_scores = likelihood.option_scores(images, items, shared)
    finally:
        handle.remove()
    assert not calls  # read from generate's prefill
    torch.testing.assert_close(shared_scores, likelihood.option_scores(images, items), rtol=0, atol=1e-4)
    if family != "idefics2":
        with pytest.raises(ValueError, match="Idefics2"):
            shared.image_features()


# --------------------------------------------------------------------------------------------------- loading
def test_saved_checkpoints_of_every_family_load_and_evaluate(family_model, tmp_path):
    from finedefics_eval.benchmarks import Benchmark
    from finedefics_eval.loading import SUPPORTED_MODEL_TYPES, load_model, read_checkpoint_config
    from finedefics_eval.runner import evaluate_model

    family, model, processor = family_model
    assert {FAMILIES[family].model_type, FAMILIES[family].stock_model_type} <= set(SUPPORTED_MODEL_TYPES)
    model.save_pretrained(tmp_path / "ck")
    processor.save_pretrained(tmp_path / "ck")
    loaded, loaded_processor = load_model(str(tmp_path / "ck"), device="cpu")
    assert type(loaded) is FAMILIES[family].model and type(loaded_processor) is FAMILIES[family].processor
    items, images = toy_items(2), toy_images(2)
    by_id = {item.example.example_id: image for item, image in zip(items, images)}
    bench = Benchmark(name="toy", split="test", examples=[item.example for item in items], categories=list(BIRDS),
                      query=foci_query("birds"), open_set_question="What is the species of the bird in the image?",
                      image_getter=lambda example: by_id[example.example_id])
    options = dict(modes=("generate", "embedding"), batch_size=2, bootstrap_samples=0, progress=False)
    assert (evaluate_model(loaded, loaded_processor, bench, **options)["predictions"]
            == evaluate_model(model, processor, bench, **options)["predictions"])
    config = tmp_path / "ck" / "config.json"
    config.write_text(config.read_text().replace(f'"{FAMILIES[family].model_type}"', '"mistral"'))
    with pytest.raises(ValueError, match="model_type is 'mistral'"):
        read_checkpoint_config(tmp_path / "ck")
