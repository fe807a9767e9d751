"""The model-based description pipeline: stand-in models, pipeline-shaped outputs, and one real
transformers pipeline built offline from a tiny random GPT-2."""

import numpy as np
import pytest

from finedefics_data import describe as D
from finedefics_data.schema import RecordError
from finedefics_data.synth import SynthConfig, build_categories, sample_image

ATTRIBUTE_LIST = ["plumage", "tail", "beak"]


@pytest.fixture(scope="module")
def birds():
    """Three synthetic images with their true attribute values (occlusion off)."""
    config = SynthConfig(num_genera=2, species_per_genus=2, occlusion_prob=0.0)
    categories = build_categories(config)
    samples = [sample_image(c, "test", 0, config) for c in categories[:3]]
    return [image for image, _, _ in samples], [visible for _, visible, _ in samples]


def reading_vqa(truth_by_image, hide=None):
    """A stand-in VQA model that reads the true value of the asked attribute off the image's record.

    ``hide``: ``(image, attribute)`` it answers "Not visible." for.
    """
    asked = []

    def vqa(image, question):
        asked.append(question)
        truth = truth_by_image[id(image)]
        attribute = next(a for a in ATTRIBUTE_LIST if f"the {a} of" in question)
        if hide and (hide[0] is image and hide[1] == attribute):
            return "Not visible."
        return f"{truth[attribute].capitalize()}."

    return vqa, asked


def test_describe_images_reads_each_attribute_and_summarises(birds):
    images, truths = birds
    vqa, asked = reading_vqa({id(i): t for i, t in zip(images, truths)}, hide=(images[1], "tail"))
    prompts = []

    def summarise(prompt):
        prompts.append(prompt)
        pairs = prompt.splitlines()[1:-2]  # the prompt's "attribute: value" lines
        return "a bird with " + ", ".join(p.replace(": ", " ") for p in pairs) + ". Anything else I can do?"

    result = D.describe_images(images, ATTRIBUTE_LIST, vqa, summarise, progress=False)
    assert len(result) == 3 and len(asked) == 9
    assert "What is the tail of the bird in the image?" in asked[1]
    assert result.values[0] == {a: truths[0][a] for a in ATTRIBUTE_LIST}
    assert "tail" not in result.values[1]  # "not visible" is left out, as an occluded part
    assert result[0] == (f"a bird with plumage {truths[0]['plumage']}, tail {truths[0]['tail']}, "
                         f"beak {truths[0]['beak']}.")
    assert f"plumage: {truths[2]['plumage']}" in prompts[2] and 'starts with "a bird with"' in prompts[2]
    assert result.report.notes == {"attribute answers 'not visible' or empty (left out)": 1}


def test_empty_summaries_and_invisible_images_are_counted(birds):
    images, truths = birds
    answers = iter(["red", "forked", "short"] + ["not visible"] * 3 + ["blue", "", "long"])
    result = D.describe_images(images, ATTRIBUTE_LIST, lambda image, q: next(answers), lambda prompt: "   ",
                               progress=False)
    assert result[0] == "a bird with plumage red, tail forked, beak short."  # template, since the summary was empty
    assert result[1] == ""
    assert result[2] == "a bird with plumage blue, beak long."
    assert result.report.notes["empty summaries (template sentence used)"] == 2
    assert result.report.notes["images with no visible attribute (description '')"] == 1
    assert result.report.notes["attribute answers 'not visible' or empty (left out)"] == 4


def test_image_paths_are_opened_and_missing_ones_named(birds, tmp_path):
    images, _ = birds
    images[0].save(tmp_path / "a.png")
    result = D.describe_images([tmp_path / "a.png"], ["plumage"], lambda image, q: f"{image.size[0]} px",
                               lambda prompt: "a bird with 64 px plumage.", progress=False)
    assert result.values == [{"plumage": "64 px"}]
    with pytest.raises(RecordError, match=r"images, row 1, field 'image': image file not found"):
        D.describe_images([tmp_path / "a.png", tmp_path / "gone.png"], ["plumage"], lambda i, q: "red",
                          lambda p: "a red bird.", progress=False)
    with pytest.raises(ValueError, match="attribute_list is empty"):
        D.describe_images(images, [" "], lambda i, q: "red", lambda p: "x", progress=False)


@pytest.mark.parametrize("output, prompt, text", [
    ("plain", None, "plain"),
    ([{"generated_text": "PROMPT a red bird."}], "PROMPT", "a red bird."),
    ([{"answer": "red", "score": 0.9}, {"answer": "blue", "score": 0.1}], None, "red"),
    ([{"summary_text": "a bird."}], None, "a bird."),
    ([{"generated_text": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a bird."}]}], None,
     "a bird."),
    ([], None, ""),
])
def test_as_text_reads_pipeline_outputs(output, prompt, text):
    assert D.as_text(output, prompt) == text


def test_as_text_rejects_unknown_outputs():
    with pytest.raises(ValueError, match="keys \\['logits'\\]"):
        D.as_text({"logits": [0.1]})


def test_propose_attributes_parses_the_llm_answer():
    answer = "1. Bill shape\n2) wing colour\n- tail pattern, crown colour\n* Bill shape\n"
    prompts = []
    attributes = D.propose_attributes("birds", lambda prompt: prompts.append(prompt) or answer, max_attributes=3)
    assert attributes == ["bill shape", "wing colour", "tail pattern"]
    assert "species of birds" in prompts[0]
    with pytest.raises(ValueError, match="proposed no attributes"):
        D.propose_attributes("birds", lambda prompt: "\n\n")


def test_prompts_live_in_the_repo():
    for name in ("attribute_list", "attribute_question", "summary"):
        assert "{" in D.load_prompt(name)
    assert D.load_prompt("summary").format(noun="car", pairs="colour: red").count("car") == 2
    with pytest.raises(FileNotFoundError, match="available"):
        D.load_prompt("nope")


# ----------------------------------------------------------------------------- a real pipeline
@pytest.fixture(scope="module")
def tiny_gpt2_pipeline():
    """A transformers text-generation pipeline around a randomly initialised 1-layer GPT-2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

    corpus = [D.load_prompt(n) for n in ("attribute_list", "attribute_question", "summary")] + [
        "a bird with red plumage, a forked tail and a short conical beak.", "plumage tail beak: red blue forked short"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>",
                                        pad_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)).eval()
    return pipeline("text-generation", model=model, tokenizer=tokenizer)


def test_a_real_transformers_pipeline_plugs_in_as_summariser(birds, tiny_gpt2_pipeline):
    images, truths = birds
    pipe = tiny_gpt2_pipeline
    prompt = D.load_prompt("summary").format(noun="bird", pairs="plumage: red")
    direct = pipe(prompt, max_new_tokens=48, do_sample=False, return_full_text=False)[0]["generated_text"].strip()
    assert D.text_caller(pipe)(prompt) == direct  # the adapter asks the pipeline for only the new text

    vqa, _ = reading_vqa({id(i): t for i, t in zip(images, truths)})
    result = D.describe_images(images, ATTRIBUTE_LIST, vqa, pipe, progress=False)
    assert len(result) == 3 and all(isinstance(s, str) and s for s in result)
    written_by_model = [s for s, v in zip(result, result.values) if s != D.template_summary(v, "bird")]
    templates = result.report.notes.get("empty summaries (template sentence used)", 0)
    assert len(written_by_model) + templates == 3
    for sentence in written_by_model:
        assert sentence == D.one_sentence(sentence) and "Summary:" not in sentence
    again = D.describe_images(images, ATTRIBUTE_LIST, vqa, pipe, progress=False)
    assert list(again) == list(result)  # greedy decoding: reproducible


def test_pipelines_of_the_wrong_task_are_refused(tiny_gpt2_pipeline):
    with pytest.raises(ValueError, match="cannot answer questions about images"):
        D.vqa_caller(tiny_gpt2_pipeline)


def test_save_descriptions_jsonl(birds, tmp_path):
    import json

    images, truths = birds
    vqa, _ = reading_vqa({id(i): t for i, t in zip(images, truths)})
    result = D.describe_images(images, ["plumage"], vqa, lambda p: "a bird.", progress=False)
    path = D.save_descriptions(tmp_path / "d.jsonl", result, keys=["x", "y", "z"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["x", "y", "z"]
    assert json.loads(rows[1]["attributes"]) == {"plumage": truths[1]["plumage"]}
    assert np.all([r["attribute"] == "a bird." for r in rows])
