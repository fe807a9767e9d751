"""The model package: save/load through the Auto classes, generation, embeddings, temperatures, bad input."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import modeling_finedefics  # noqa: F401  (registers the Auto classes)
from modeling_finedefics import FinedeficsForConditionalGeneration

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder, inputs_file, outputs_file, mode = sys.argv[1:5]
    remote = mode == "remote"
    if not remote:
        import modeling_finedefics  # local registration, no remote code
    config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=remote).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
    inputs = load_file(inputs_file)
    texts = processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       pixel_values=inputs["pixel_values"]).logits
        image_embeds = model.get_image_embeddings(inputs["pixel_values"])
        text_embeds = model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
    scales = model.get_logit_scales()
    save_file({"logits": logits, "image_embeds": image_embeds, "text_embeds": text_embeds,
               "object_attribute": scales["object_attribute"].detach(),
               "attribute_category": scales["attribute_category"].detach()}, outputs_file)
    print(type(config).__module__, type(model).__module__, type(processor).__module__)
    """
)


def _chat_prompt(processor, question="What is the species of the bird in the image?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _image_inputs(processor, images):
    prompts = [_chat_prompt(processor)] * len(images)
    return processor(images=[[image] for image in images], text=prompts, return_tensors="pt", padding=True)


def _random_image(seed, size=(64, 64), mode="RGB"):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.fixture
def saved_checkpoint(tmp_path, micro_model, tiny_processor):
    """A micro checkpoint with non-default (trained-looking) temperatures."""
    with torch.no_grad():
        micro_model.temperatures.object_attribute.fill_(3.1)
        micro_model.temperatures.attribute_category.fill_(2.2)
    folder = tmp_path / "checkpoint"
    micro_model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


def _run_fresh_process(folder, tmp_path, processor, model, mode):
    inputs = _image_inputs(processor, [_random_image(1), _random_image(2, (48, 80))])
    inputs_file, outputs_file = tmp_path / f"inputs-{mode}.safetensors", tmp_path / f"outputs-{mode}.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, inputs_file)
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(inputs_file), str(outputs_file), mode],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ.copy(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(outputs_file), result.stdout.strip().splitlines()[-1], inputs


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_save_then_load_in_fresh_process_is_identical(saved_checkpoint, tmp_path, tiny_processor, micro_model, mode):
    outputs, modules, inputs = _run_fresh_process(saved_checkpoint, tmp_path, tiny_processor, micro_model, mode)
    if mode == "remote":
        assert all(name.startswith("transformers_modules.") for name in modules.split()), modules
    else:
        assert all(name.startswith("modeling_finedefics.") for name in modules.split()), modules
    texts = tiny_processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
    with torch.no_grad():
        logits = micro_model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
        image_embeds = micro_model.get_image_embeddings(inputs["pixel_values"])
        text_embeds = micro_model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
    torch.testing.assert_close(outputs["logits"], logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["image_embeds"], image_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs["text_embeds"], text_embeds, rtol=0, atol=1e-6)
    scales = micro_model.get_logit_scales()
    assert outputs["object_attribute"].item() == pytest.approx(torch.exp(torch.tensor(3.1)).item(), rel=1e-6)
    assert outputs["object_attribute"].item() == scales["object_attribute"].item()
    assert outputs["attribute_category"].item() == scales["attribute_category"].item()


def test_saved_folder_carries_code_and_auto_map(saved_checkpoint):
    config = json.loads((saved_checkpoint / "config.json").read_text())
    assert config["model_type"] == "finedefics"
    expected = "modeling_finedefics.FinedeficsForConditionalGeneration"
    assert config["auto_map"]["AutoModelForImageTextToText"] == expected
    assert config["auto_map"]["AutoConfig"] == "configuration_finedefics.FinedeficsConfig"
    processor_config = json.loads((saved_checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_finedefics.FinedeficsProcessor"
    for name in ("configuration_finedefics.py", "modeling_finedefics.py", "processing_finedefics.py", "alignment.py"):
        code = (saved_checkpoint / name).read_text()
        assert "finedefics_training" not in code and "finedefics_eval" not in code
    assert not list(saved_checkpoint.glob("*.bin"))


@pytest.fixture
def image_dependent_model(micro_model):
    """The micro model with its weight matrices scaled up: at the initial scale its greedy answer is the same
    token whatever the image; scaled, a red and a blue image get different answers."""
    with torch.no_grad():
        for parameter in micro_model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(3.0)
    return micro_model


def test_pipeline_answers_a_chat_message_with_an_image(image_dependent_model, tiny_processor, tmp_path):
    from transformers import pipeline

    folder = tmp_path / "checkpoint"
    image_dependent_model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    pipe = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)
    assert type(pipe.model).__name__ == "FinedeficsForConditionalGeneration"
    answers = []
    for image in (Image.new("RGB", (70, 50), "red"), Image.new("RGB", (50, 70), "blue")):
        messages = [{"role": "user", "content": [
            {"type": "image", "image": image},
            {"type": "text", "text": "What is the species of the bird in the image?"},
        ]}]
        reply = pipe(text=messages, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"][-1]
        assert reply["role"] == "assistant"
        # The reply is the model's own greedy answer to the same chat prompt and image, decoded.
        inputs = tiny_processor(images=[[image]], text=[_chat_prompt(tiny_processor)], return_tensors="pt")
        generated = image_dependent_model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        answer = tiny_processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert reply["content"] == answer
        answers.append(answer)
    assert answers[0] != answers[1]  # the answers depend on the image, so a reply that ignores it fails


def test_generate_with_images_of_different_sizes_and_modes(micro_model, tiny_processor):
    rgb = _random_image(4, (64, 64))
    images = [
        rgb,
        _random_image(5, (31, 90), "L"),
        _random_image(6, (120, 40), "RGBA"),
        _random_image(7, (50, 50), "P"),
        _random_image(8, (64, 48), "CMYK"),
    ]
    inputs = _image_inputs(tiny_processor, images)
    assert inputs["pixel_values"].shape[:3] == (5, 1, 3)
    generated = micro_model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 5 and generated.shape[1] > inputs["input_ids"].shape[1]


def test_batched_generation_with_left_padding_answers_each_image_as_alone(micro_model, tiny_processor):
    images = [_random_image(4), _random_image(5, (31, 90)), _random_image(6, (120, 40))]
    questions = ["What is the species of the bird in the image?",
                 "Describe the attributes of the object in the image. The object has a red crown and barred wings.",
                 "What is the species of the bird in the image? Answer with its name, and the name of its family."]
    prompts = [_chat_prompt(tiny_processor, question) for question in questions]
    batch = tiny_processor(images=[[image] for image in images], text=prompts, return_tensors="pt", padding=True,
                           padding_side="left")
    real_tokens = batch["attention_mask"].sum(dim=1)
    assert real_tokens[0] < real_tokens[1] < real_tokens[2]  # rows 0 and 1 really are padded ...
    assert (batch["attention_mask"][:2, 0] == 0).all()  # ... on the left
    generated = micro_model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    prompt_length = batch["input_ids"].shape[1]
    for row, (image, prompt) in enumerate(zip(images, prompts)):
        alone = tiny_processor(images=[[image]], text=[prompt], return_tensors="pt")
        expected = micro_model.generate(**alone, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        assert torch.equal(generated[row, prompt_length:], expected[0, alone["input_ids"].shape[1]:]), row


def _record_decoder_masks(model, monkeypatch):
    """The attention masks of every decoder pass the embedding code makes."""
    masks = []
    pool = model._pool_summary

    def recording(inputs_embeds, attention_mask):
        masks.append(attention_mask.clone())
        return pool(inputs_embeds, attention_mask)

    monkeypatch.setattr(model, "_pool_summary", recording)
    return masks


def test_text_embeddings_are_padding_invariant_and_unit_norm(micro_model, tiny_processor, monkeypatch):
    # Lengths close enough to share one decoder pass, so the shorter row is pooled from a padded batch.
    texts = ["a small bird with a red crown", "a small bird with a red crown, a short conical beak"]
    right = tiny_processor.tokenize_texts(texts, padding_side="right")
    left = tiny_processor.tokenize_texts(texts, padding_side="left")
    masks = _record_decoder_masks(micro_model, monkeypatch)
    with torch.no_grad():
        right_embeds = micro_model.get_text_embeddings(right["input_ids"], right["attention_mask"])
        left_embeds = micro_model.get_text_embeddings(left["input_ids"], left["attention_mask"])
    assert right["attention_mask"][0].sum() < right["attention_mask"][1].sum()  # row 0 really is padded
    # One decoder pass per call, over both rows, with row 0's padding in it.
    assert [mask.shape[0] for mask in masks] == [2, 2] and all((mask[0] == 0).any() for mask in masks)
    with torch.no_grad():
        alone = micro_model.get_text_embeddings(**tiny_processor.tokenize_texts(texts[:1]))
    torch.testing.assert_close(right_embeds, left_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(right_embeds[:1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(right_embeds.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(right_embeds[0], right_embeds[1])


def test_image_embeddings_unit_norm_and_reuse_of_forward_features(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor, [_random_image(9), _random_image(10)])
    with torch.no_grad():
        embeds = micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        outputs = micro_model(**inputs)
        reused = micro_model.get_image_embeddings(image_features=outputs.image_outputs.pooler_output)
    assert embeds.shape == (2, micro_model.config.text_config.hidden_size)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(embeds, reused, rtol=0, atol=1e-6)
    assert not torch.allclose(embeds[0], embeds[1])


def test_one_pass_embeddings_match_separate_calls(micro_model, tiny_processor):
    images = tiny_processor.image_processor([[_random_image(11)], [_random_image(12)]], return_tensors="pt")
    texts = tiny_processor.tokenize_texts(["Velmoran Thistlewing", "a small bird with a red crown"])
    with torch.no_grad():
        joint = micro_model.get_embeddings(images["pixel_values"], images["pixel_attention_mask"], **texts)
        image_only = micro_model.get_image_embeddings(images["pixel_values"], images["pixel_attention_mask"])
        text_only = micro_model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
    torch.testing.assert_close(joint.image_embeds, image_only, rtol=0, atol=1e-5)
    torch.testing.assert_close(joint.text_embeds, text_only, rtol=0, atol=1e-5)


def test_forward_with_contrastive_texts_gives_the_embeddings_of_the_separate_calls(micro_model, tiny_processor):
    """The training step's one forward: same logits, and the embeddings get_*_embeddings give on the same inputs."""
    inputs = _image_inputs(tiny_processor, [_random_image(21), _random_image(22, (48, 80))])
    texts = tiny_processor.tokenize_texts(["Velmoran Thistlewing", "a small bird with a red crown", "a bird"])
    assert (texts["attention_mask"] == 0).any()  # padded rows, pooled at their own last token
    with torch.no_grad():
        micro_model.temperatures.object_attribute.fill_(2.5)  # two different scales: a swap shows
        micro_model.temperatures.attribute_category.fill_(3.0)
        joint = micro_model(**inputs, contrastive_input_ids=texts["input_ids"],
                            contrastive_attention_mask=texts["attention_mask"])
        plain = micro_model(**inputs)
        image_embeds = micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        text_embeds = micro_model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
    hidden = micro_model.config.text_config.hidden_size
    assert joint.image_embeds.shape == (2, hidden) and joint.text_embeds.shape == (3, hidden)
    torch.testing.assert_close(joint.logits, plain.logits, rtol=0, atol=0)
    torch.testing.assert_close(joint.image_embeds, image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(joint.text_embeds, text_embeds, rtol=0, atol=1e-5)
    scales = micro_model.get_logit_scales()
    assert set(joint.logit_scales) == set(scales)
    for name, scale in scales.items():
        assert joint.logit_scales[name].item() == scale.item()


def test_gradients_reach_decoder_and_temperatures(micro_model, tiny_processor):
    micro_model.train()
    images = tiny_processor.image_processor([[_random_image(13)], [_random_image(14)]], return_tensors="pt")
    texts = tiny_processor.tokenize_texts(["Velmoran Thistlewing", "Ashcombe Reedhopper"])
    out = micro_model.get_embeddings(images["pixel_values"], images["pixel_attention_mask"], **texts)
    scale = micro_model.get_logit_scales()["object_attribute"]
    logits = scale * out.image_embeds @ out.text_embeds.T
    torch.nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    decoder_grad = micro_model.model.text_model.layers[0].self_attn.q_proj.weight.grad
    vision_grad = micro_model.model.vision_model.embeddings.patch_embedding.weight.grad
    assert decoder_grad is not None and decoder_grad.abs().sum() > 0
    assert vision_grad is not None and vision_grad.abs().sum() > 0
    assert micro_model.temperatures.object_attribute.grad is not None
    assert micro_model.temperatures.object_attribute.grad.abs() > 0


def test_temperatures_start_at_config_value_and_are_clamped(micro_model):
    scales = micro_model.get_logit_scales()
    assert scales["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        micro_model.temperatures.object_attribute.fill_(50.0)
        micro_model.temperatures.attribute_category.fill_(-50.0)
    scales = micro_model.get_logit_scales()
    assert scales["object_attribute"].item() == pytest.approx(1 / micro_model.config.min_temperature, rel=1e-5)
    assert scales["attribute_category"].item() == pytest.approx(1 / micro_model.config.max_temperature, rel=1e-5)


def test_summary_token_follows_the_tokenizer_eos(micro_model, tiny_processor):
    assert micro_model.config.summary_token_id == tiny_processor.tokenizer.eos_token_id
    row = tiny_processor.tokenize_texts(["Velmoran Thistlewing"])["input_ids"][0]
    assert row[-1].item() == tiny_processor.tokenizer.eos_token_id


def test_classify_ranks_candidate_labels(micro_model, tiny_processor):
    labels = ["Velmoran Thistlewing", "Ashcombe Reedhopper", "a bird"]
    images = [_random_image(15), _random_image(16)]
    with torch.no_grad():
        micro_model.temperatures.object_attribute.fill_(4.0)  # classify uses the attribute-category scale
        micro_model.temperatures.attribute_category.fill_(2.0)
    # label_batch_size=2 embeds the labels in two chunks.
    result = micro_model.classify(images, labels, tiny_processor, top_k=2, label_batch_size=2)
    assert len(result.labels) == 2 and all(len(row) == 2 for row in result.labels)
    assert result.logits.shape == (2, 3)

    # Independently: scale * cosine of the two embeddings, a softmax over the labels, the best two.
    with torch.no_grad():
        pixels = tiny_processor.image_processor([[image] for image in images], return_tensors="pt")
        image_embeds = micro_model.get_image_embeddings(pixels["pixel_values"], pixels["pixel_attention_mask"])
        label_embeds = torch.cat([micro_model.get_text_embeddings(**tiny_processor.tokenize_texts([label]))
                                  for label in labels])
    scale = math.exp(2.0)
    for i in range(len(images)):
        logits = [scale * F.cosine_similarity(image_embeds[i], label_embeds[j], dim=0).item() for j in range(3)]
        total = sum(math.exp(value) for value in logits)
        probabilities = [math.exp(value) / total for value in logits]
        best = sorted(range(3), key=lambda j: -probabilities[j])[:2]
        assert result.logits[i].tolist() == pytest.approx(logits, rel=1e-4, abs=1e-5)
        assert result.indices[i].tolist() == best
        assert result.labels[i] == [labels[j] for j in best]
        assert result.scores[i].tolist() == pytest.approx([probabilities[j] for j in best], rel=1e-4)


# ------------------------------------------------------------------ bad input
def test_image_count_mismatch_is_a_clear_error(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor, [_random_image(17)])
    two_images = torch.cat([inputs["pixel_values"], inputs["pixel_values"]], dim=1)
    with pytest.raises(ValueError, match="image tokens and images do not match"):
        micro_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=two_images)
    with pytest.raises(ValueError, match="number of <image> tokens|number of images"):
        tiny_processor(images=[_random_image(18), _random_image(19)], text=[_chat_prompt(tiny_processor)])


def test_empty_text_list_and_empty_text_are_clear_errors(tiny_processor):
    with pytest.raises(ValueError, match="empty list"):
        tiny_processor.tokenize_texts([])
    with pytest.raises(ValueError, match="text 1 is empty"):
        tiny_processor.tokenize_texts(["a bird", "   "])


def test_text_longer_than_the_maximum_is_a_clear_error(tiny_processor, micro_model):
    long_text = " ".join(["bird"] * 600)
    with pytest.raises(ValueError, match="more than the maximum of 512"):
        tiny_processor.tokenize_texts([long_text])
    ids = torch.ones(1, 600, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than the model's maximum"):
        micro_model.get_text_embeddings(ids, torch.ones_like(ids))


def test_one_pixel_image_is_a_clear_error(tiny_processor):
    with pytest.raises(ValueError, match="1x1 pixels"):
        tiny_processor(images=[[Image.new("RGB", (1, 1))]], text=[_chat_prompt(tiny_processor)])


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_bad_image_file_is_a_clear_error_naming_it(tmp_path, tiny_processor, damage):
    path = tmp_path / "bird.png"
    _random_image(20, (64, 64)).save(path)
    data = path.read_bytes()
    if damage == "corrupt":
        path.write_bytes(b"not an image at all" + data[:10])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(ValueError, match="bird.png"):
        tiny_processor(images=[[str(path)]], text=[_chat_prompt(tiny_processor)])


def test_checkpoint_without_weights_is_a_clear_error(saved_checkpoint):
    (saved_checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no weights"):
        FinedeficsForConditionalGeneration.from_pretrained(saved_checkpoint)


def test_loading_never_unpickles(saved_checkpoint):
    """A folder that only has a pickled .bin file is refused, even through the Auto classes."""
    from transformers import AutoModelForImageTextToText

    state = load_file(saved_checkpoint / "model.safetensors")
    torch.save(state, saved_checkpoint / "pytorch_model.bin")
    (saved_checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors only"):
        AutoModelForImageTextToText.from_pretrained(saved_checkpoint, trust_remote_code=True)
