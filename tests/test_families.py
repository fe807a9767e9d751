"""Every Finedefics family (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA): stock checkpoints load
unchanged, checkpoints round-trip through remote code, embeddings, classify, dtypes, conversion, training."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

import modeling_finedefics  # noqa: F401  (registers the Auto classes)
from modeling_finedefics.families import FAMILIES, family_for_model_type, finedefics_config_class

FAMILY_NAMES = list(FAMILIES)
CORPUS = ["a small bird with a red crown, a short conical beak and barred brown wings",
          "Velmoran Thistlewing", "Ashcombe Reedhopper", "What is the species of the bird in the image?"]
TEMPERATURES = {"temperatures.object_attribute", "temperatures.attribute_category"}


def _image(seed, size=(64, 64)):
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


# Two images of different sizes: Qwen gives them different token counts, Idefics3/SmolVLM different splits.
IMAGES = [_image(1, (64, 48)), _image(2, (24, 32))]


def _build(family, stock=False, seed=0, **overrides):
    if family == "idefics2" and stock:
        from transformers import Idefics2Config, Idefics2ForConditionalGeneration

        from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_config

        processor = build_tiny_processor(build_tiny_tokenizer(CORPUS))
        config = tiny_config(processor, "micro").to_dict()
        for key in ("embed_dim", "init_temperature", "min_temperature", "max_temperature", "summary_token_id",
                    "object_noun", "object_noun_plural", "model_type", "auto_map", "architectures"):
            config.pop(key, None)
        torch.manual_seed(seed)
        return Idefics2ForConditionalGeneration(Idefics2Config(**config)).eval(), processor
    return FAMILIES[family].build_tiny(CORPUS, seed=seed, stock=stock, **overrides)


def _prompt_inputs(processor, images=IMAGES):
    """A chat prompt (the processor's own template) per image, with its pixels: logits depend on the images."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the bird?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    nested = [[image] for image in images]
    return processor(images=nested, text=[prompt] * len(images), return_tensors="pt", padding=True)


def _logits(model, processor):
    with torch.no_grad():
        return model(**_prompt_inputs(processor)).logits


def _save(model, processor, folder):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ------------------------------------------------------------- stock checkpoints
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stock_checkpoint_loads_unchanged_with_identical_logits(family, tmp_path):
    stock, processor = _build(family, stock=True)
    assert type(stock) is FAMILIES[family].stock_model
    stock.save_pretrained(tmp_path / "stock")
    model, info = FAMILIES[family].model.from_pretrained(tmp_path / "stock", output_loading_info=True)
    model.eval()
    assert set(info["missing_keys"]) == TEMPERATURES and not info["unexpected_keys"]
    stock_logits, logits = _logits(stock, processor), _logits(model, processor)
    torch.testing.assert_close(logits, stock_logits, rtol=0, atol=0)
    other = _prompt_inputs(processor, [_image(7, (64, 48)), _image(8, (24, 32))])
    with torch.no_grad():  # the pixels matter: other images, other logits
        assert not torch.allclose(model(**other).logits, logits)
    assert model.get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.config.summary_token_id == processor.tokenizer.eos_token_id


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_load_keeps_temperatures_float32(family, tmp_path):
    stock, _ = _build(family, stock=True)
    stock.save_pretrained(tmp_path / "stock")
    model, processor = _build(family)
    with torch.no_grad():
        model.temperatures.object_attribute.fill_(3.1)
    _save(model, processor, tmp_path / "finedefics")
    for folder, expected in ((tmp_path / "stock", torch.log(torch.tensor(1 / 0.07)).item()),
                             (tmp_path / "finedefics", 3.1)):
        loaded = FAMILIES[family].model.from_pretrained(folder, dtype=torch.bfloat16)
        assert loaded.get_input_embeddings().weight.dtype == torch.bfloat16
        assert loaded.temperatures.object_attribute.dtype == torch.float32
        assert loaded.temperatures.object_attribute.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------- save / remote load
ROUND_TRIP_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_finedefics"] = None  # the repository's package must not be what loads
    import json, torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    results = {}
    for folder in sys.argv[2:]:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        inputs = load_file(folder + "/inputs.safetensors")
        prompt = {k[7:]: v for k, v in inputs.items() if k.startswith("prompt.")}
        with torch.no_grad():
            images = {k[6:]: v for k, v in inputs.items() if k.startswith("image.")}
            texts = processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
            out = {"logits": model(**prompt).logits, "image_embeds": model.get_image_embeddings(**images),
                   "text_embeds": model.get_text_embeddings(texts["input_ids"], texts["attention_mask"]),
                   "text_ids": texts["input_ids"]}
        save_file({k: v.contiguous() for k, v in out.items()}, folder + "/outputs.safetensors")
        results[folder] = [type(config).__module__, type(model).__module__, type(processor).__module__,
                           type(model).__name__, type(processor).__name__,
                           str(model.temperatures.object_attribute.dtype)]
    with open(sys.argv[1], "w") as handle:
        json.dump(results, handle)
    """
)


def test_save_then_remote_code_load_in_a_fresh_process_without_the_repository(tmp_path):
    """All families in one subprocess (one interpreter start), from copies of the saved folders, in a cwd and
    with a PYTHONPATH that exclude the repository, and its package blocked from import."""
    expected, folders = {}, []
    for family in FAMILY_NAMES:
        model, processor = _build(family, seed=1)
        with torch.no_grad():
            model.temperatures.attribute_category.fill_(2.2)
        saved = _save(model, processor, tmp_path / "saved" / family)
        config = json.loads((saved / "config.json").read_text())
        assert config["model_type"] == FAMILIES[family].model_type
        code_files = {name for name in os.listdir(saved) if name.endswith(".py")}
        assert {f"{FAMILIES[family].code_module}.py", "alignment.py"} <= code_files, code_files
        for name in code_files:
            text = (saved / name).read_text()
            assert "finedefics_training" not in text and "finedefics_eval" not in text and "tiny" not in name
        folder = tmp_path / "elsewhere" / family
        shutil.copytree(saved, folder)
        prompt = _prompt_inputs(processor)
        images = processor.image_embedding_inputs(IMAGES)
        save_file({**{f"prompt.{k}": v.contiguous() for k, v in prompt.items()},
                   **{f"image.{k}": v.contiguous() for k, v in images.items()}}, folder / "inputs.safetensors")
        texts = processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
        with torch.no_grad():
            expected[str(folder)] = (family, model(**prompt).logits, model.get_image_embeddings(**images),
                                     model.get_text_embeddings(**texts), texts["input_ids"])
        folders.append(str(folder))
    script = tmp_path / "load.py"
    script.write_text(ROUND_TRIP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "results.json"), *folders],
                            capture_output=True, text=True, cwd=run_dir, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for folder, (family, logits, image_embeds, text_embeds, text_ids) in expected.items():
        modules = results[folder]
        assert all(name.startswith("transformers_modules.") for name in modules[:3]), modules
        assert modules[3:5] == [FAMILIES[family].model.__name__, FAMILIES[family].processor.__name__]
        assert modules[5] == "torch.float32"
        outputs = load_file(os.path.join(folder, "outputs.safetensors"))
        assert torch.equal(outputs["text_ids"], text_ids), family  # the remote processor tokenises the same
        torch.testing.assert_close(outputs["logits"], logits, rtol=0, atol=1e-5, msg=family)
        torch.testing.assert_close(outputs["image_embeds"], image_embeds, rtol=0, atol=1e-5, msg=family)
        torch.testing.assert_close(outputs["text_embeds"], text_embeds, rtol=0, atol=1e-5, msg=family)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_auto_classes_pick_the_family_classes(family, tmp_path):
    model, processor = _build(family)
    folder = _save(model, processor, tmp_path / family)
    assert type(AutoConfig.from_pretrained(folder)) is FAMILIES[family].config
    assert type(AutoModelForImageTextToText.from_pretrained(folder)) is FAMILIES[family].model
    assert type(AutoProcessor.from_pretrained(folder)) is FAMILIES[family].processor
    assert finedefics_config_class(FAMILIES[family].stock_model_type) is FAMILIES[family].config
    assert family_for_model_type(FAMILIES[family].model_type).name == family


def test_every_family_has_its_own_model_type():
    types = [family.model_type for family in FAMILIES.values()]
    assert len(set(types)) == len(types) and FAMILIES["idefics2"].model_type == "finedefics"
    assert not {family.stock_model_type for family in FAMILIES.values()} & set(types)
    with pytest.raises(ValueError, match="no Finedefics family"):
        family_for_model_type("llama")


# ------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_embeddings_shapes_norms_padding_and_image_dependence(family):
    model, processor = _build(family)
    hidden = model.config.get_text_config().hidden_size
    images = processor.image_embedding_inputs(IMAGES)
    texts = ["a small bird with a red crown", "a small bird with a red crown, a short conical beak"]
    right = processor.tokenize_texts(texts, padding_side="right")
    left = processor.tokenize_texts(texts, padding_side="left")
    assert (right["attention_mask"][0] == 0).any()  # row 0 really is padded
    assert right["input_ids"][0, right["attention_mask"][0].sum() - 1] == processor.tokenizer.eos_token_id
    with torch.no_grad():
        image_embeds = model.get_image_embeddings(**images)
        right_embeds = model.get_text_embeddings(right["input_ids"], right["attention_mask"])
        left_embeds = model.get_text_embeddings(left["input_ids"], left["attention_mask"])
        alone = model.get_image_embeddings(**processor.image_embedding_inputs(IMAGES[1:]))
        changed = model.get_image_embeddings(**processor.image_embedding_inputs([_image(9, (64, 48)), IMAGES[1]]))
    assert image_embeds.shape == (2, hidden) and right_embeds.shape == (2, hidden)
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(right_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(left_embeds, right_embeds, rtol=0, atol=1e-5)
    assert not torch.allclose(right_embeds[0], right_embeds[1], atol=1e-4)
    # Batched with a longer row or alone, an image gets the same embedding; another image, another one.
    torch.testing.assert_close(alone[0], image_embeds[1], rtol=0, atol=1e-5)
    assert not torch.allclose(changed[0], image_embeds[0], atol=1e-4)
    torch.testing.assert_close(changed[1], image_embeds[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if name != "idefics2"])
def test_image_summary_rows_are_the_family_token_sequence(family):
    """The summary row is the processor's expansion of one image placeholder, then the summary token; left
    padding of those rows gives the same embeddings (Qwen's rows differ in length: one is padded)."""
    model, processor = _build(family)
    batch = processor.image_embedding_inputs(IMAGES)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(dim=1)
    for row in range(2):
        real = ids[row, : lengths[row]]
        assert real[-1] == processor.tokenizer.eos_token_id
        assert (real == model.config.image_token_id).sum() > 0
        assert real[0] != processor.tokenizer.bos_token_id or processor.tokenizer.bos_token_id is None
    if family.startswith("qwen"):  # variable token counts per image, from image_grid_thw
        counts = (ids == model.config.image_token_id).sum(dim=1)
        merge = processor.image_processor.merge_size ** 2
        assert counts.tolist() == (batch["image_grid_thw"].prod(dim=-1) // merge).tolist()
        assert counts[0] != counts[1]
    if family in ("idefics3", "smolvlm"):  # split into sub-images (row/col tokens) + the global image
        row_col = processor.tokenizer.convert_tokens_to_ids("<row_1_col_1>")
        global_image = processor.tokenizer.convert_tokens_to_ids("<global-img>")
        sub_images = (batch["pixel_values"] != 0).flatten(2).any(dim=-1).sum(dim=1)
        assert (sub_images > 1).all()
        for row in range(2):
            assert (ids[row] == row_col).sum() == 1 and (ids[row] == global_image).sum() == 1
            assert (ids[row] == model.config.image_token_id).sum() == sub_images[row] * processor.image_seq_len
    if family == "llava":
        patches = (processor.image_processor.crop_size["height"] // processor.patch_size) ** 2
        assert ((ids == model.config.image_token_id).sum(dim=1) == patches).all()
    with torch.no_grad():
        embeds = model.get_image_embeddings(**batch)
        left = {**batch}
        if (mask == 0).any():
            order = torch.argsort(mask, dim=1, stable=True)  # padding first
            left.update({k: torch.gather(batch[k], 1, order) for k in ("input_ids", "attention_mask")
                         if k in batch})
            if "mm_token_type_ids" in batch:
                left["mm_token_type_ids"] = torch.gather(batch["mm_token_type_ids"], 1, order)
            assert (left["attention_mask"][:, 0] == 0).any()
        left_embeds = model.get_image_embeddings(**left)
    torch.testing.assert_close(left_embeds, embeds, rtol=0, atol=1e-5)
    bad = {**batch, "input_ids": batch["input_ids"].clone()}
    bad["input_ids"][bad["input_ids"] == processor.tokenizer.eos_token_id] = model.config.image_token_id
    with pytest.raises(ValueError):
        model.get_image_embeddings(**bad)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_classify_is_scaled_cosine_over_labels(family):
    model, processor = _build(family)
    labels = ["Velmoran Thistlewing", "Ashcombe Reedhopper", "a bird"]
    with torch.no_grad():
        model.temperatures.attribute_category.fill_(2.0)
    result = model.classify(IMAGES, labels, processor, top_k=2, label_batch_size=2)
    assert result.logits.shape == (2, 3) and all(len(row) == 2 for row in result.labels)
    with torch.no_grad():
        image_embeds = model.get_image_embeddings(**processor.image_embedding_inputs(IMAGES))
        label_embeds = model.get_text_embeddings(**processor.tokenize_texts(labels))
    expected = torch.exp(torch.tensor(2.0)) * F.cosine_similarity(image_embeds[:, None], label_embeds[None], dim=-1)
    torch.testing.assert_close(result.logits, expected.float(), rtol=1e-4, atol=1e-5)
    best = expected.softmax(dim=-1).topk(2, dim=-1).indices
    assert result.indices.tolist() == best.tolist()
    assert result.labels == [[labels[j] for j in row] for row in best.tolist()]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_non_finite_pixels_are_a_clear_error(family):
    model, processor = _build(family)
    batch = processor.image_embedding_inputs(IMAGES)
    batch["pixel_values"] = batch["pixel_values"].clone()
    batch["pixel_values"].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.get_image_embeddings(**batch)


# ---------------------------------------------------------------- conversion
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_convert_checkpoint_writes_a_finedefics_checkpoint_of_the_family(family, tmp_path):
    from finedefics_training.convert import convert_checkpoint

    stock, processor = _build(family, stock=True)
    source = _save(stock, processor, tmp_path / "stock")
    processor_config = source / "processor_config.json"
    payload = json.loads(processor_config.read_text())  # as the stock processor would have written it
    payload.pop("auto_map", None)
    payload["processor_class"] = payload.get("processor_class", "").replace("Finedefics", "") or "Processor"
    processor_config.write_text(json.dumps(payload))
    assert json.loads((source / "config.json").read_text())["model_type"] == FAMILIES[family].stock_model_type
    report = convert_checkpoint(source, tmp_path / "converted")
    assert set(report.added) == TEMPERATURES and not report.unmapped and not report.dropped
    assert report.kept == len(stock.state_dict())
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted", trust_remote_code=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path / "converted", trust_remote_code=True)
    assert type(model).__name__ == FAMILIES[family].model.__name__
    assert type(loaded_processor).__name__ == FAMILIES[family].processor.__name__
    torch.testing.assert_close(_logits(model, processor), _logits(stock, processor), rtol=0, atol=0)
    assert model.config.summary_token_id == processor.tokenizer.eos_token_id
    assert model.get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-5)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_training_step_reaches_the_decoder_not_the_frozen_vision_tower(family):
    model, processor = _build(family)
    model.train()
    for parameter in model._vision_tower().parameters():
        parameter.requires_grad_(False)
    model.enable_input_require_grads()
    seen = []
    model._vision_tower().register_forward_hook(
        lambda module, inputs, output: seen.append(
            (output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)).requires_grad))
    inputs = _prompt_inputs(processor)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    texts = processor.tokenize_texts(["Velmoran Thistlewing", "Ashcombe Reedhopper"])
    extra = {"contrastive_input_ids": texts["input_ids"], "contrastive_attention_mask": texts["attention_mask"]}
    if family != "idefics2":
        summary = processor.image_embedding_inputs(IMAGES)
        extra.update(summary_input_ids=summary["input_ids"], summary_attention_mask=summary["attention_mask"])
    outputs = model(**inputs, labels=labels, **extra)
    assert torch.isfinite(outputs.loss)
    logits = outputs.logit_scales["object_attribute"] * outputs.image_embeds @ outputs.text_embeds.T
    loss = outputs.loss + F.cross_entropy(logits, torch.arange(2))
    decoder = model._decoder()
    weight = decoder.layers[0].self_attn.q_proj.weight
    before = weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.temperatures.object_attribute.grad is not None and model.temperatures.object_attribute.grad != 0
    assert all(p.grad is None for p in model._vision_tower().parameters())
    assert seen and not any(seen)  # the frozen tower's activations are out of the graph
    optimizer.step()
    assert not torch.equal(weight.detach(), before)
    # The one-pass embeddings of forward (vision features reused) are those of the separate calls.
    model.eval()
    with torch.no_grad():
        joint = model(**inputs, **extra)
        if family == "idefics2":
            separate = model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        else:
            separate = model.get_image_embeddings(**processor.image_embedding_inputs(IMAGES))
        torch.testing.assert_close(joint.image_embeds, separate, rtol=0, atol=1e-5)
        torch.testing.assert_close(joint.text_embeds, model.get_text_embeddings(**texts), rtol=0, atol=1e-5)
