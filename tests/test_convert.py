"""`finedefics convert`: stock Idefics2 and Finedefics-release checkpoints become loadable Finedefics checkpoints."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2Processor,
)

from finedefics_cli import main
from modeling_finedefics.tiny import tiny_config

ALIGNMENT_FIELDS = ("embed_dim", "init_temperature", "min_temperature", "max_temperature", "summary_token_id")


@pytest.fixture
def stock_idefics2(tmp_path, tiny_processor):
    """A tiny stock Idefics2 checkpoint written by transformers' own classes."""
    config = tiny_config(tiny_processor, "micro").to_dict()
    for key in ALIGNMENT_FIELDS + ("model_type", "auto_map", "architectures"):
        config.pop(key, None)
    torch.manual_seed(0)
    model = Idefics2ForConditionalGeneration(Idefics2Config(**config)).eval()
    folder = tmp_path / "idefics2"
    model.save_pretrained(folder)
    processor = tiny_processor
    stock_processor = Idefics2Processor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                        image_seq_len=processor.image_seq_len, chat_template=processor.chat_template)
    stock_processor.save_pretrained(folder)
    return folder, model


def _release_layout(stock_folder, tmp_path, extra):
    folder = tmp_path / "release"
    shutil.copytree(stock_folder, folder)
    state = load_file(folder / "model.safetensors")
    state.update(extra)
    save_file(state, folder / "model.safetensors")
    return folder


def _image_prompt_inputs(tiny_processor):
    """A chat prompt with one image: the logits then depend on the vision tower and the connector too."""
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Which of these birds is shown in the image?"}]}]
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    pixels = torch.randint(0, 256, (40, 56, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB")
    return tiny_processor(images=[[image]], text=[prompt], return_tensors="pt")


def _logits(model, tiny_processor):
    inputs = _image_prompt_inputs(tiny_processor)
    assert (inputs["input_ids"] == tiny_processor.image_token_id).sum() == tiny_processor.image_seq_len
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     pixel_values=inputs["pixel_values"], pixel_attention_mask=inputs["pixel_attention_mask"]).logits


def _assert_same_idefics2_weights(converted, stock):
    """Every stock tensor arrives unchanged; the only new ones are the temperatures."""
    converted_state, stock_state = converted.state_dict(), stock.state_dict()
    assert set(converted_state) - set(stock_state) == {"temperatures.object_attribute",
                                                       "temperatures.attribute_category"}
    assert set(stock_state) <= set(converted_state)
    for name, tensor in stock_state.items():
        torch.testing.assert_close(converted_state[name], tensor, rtol=0, atol=0, msg=name)


def test_stock_idefics2_converts_with_fresh_alignment_parameters(stock_idefics2, tmp_path, tiny_processor, capsys):
    source, stock_model = stock_idefics2
    output = tmp_path / "converted"
    assert main(["convert", str(source), str(output)]) == 0
    printed = capsys.readouterr().out
    assert "added   temperatures.object_attribute" in printed

    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    assert type(model).__name__ == "FinedeficsForConditionalGeneration"
    assert type(processor).__name__ == "FinedeficsProcessor"
    torch.testing.assert_close(_logits(model, tiny_processor), _logits(stock_model, tiny_processor))
    _assert_same_idefics2_weights(model, stock_model)
    assert model.get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.config.summary_token_id == tiny_processor.tokenizer.eos_token_id
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["source_format"] == "idefics2" and not report["dropped"] and not report["unmapped"]


def test_release_layout_carries_temperatures_and_reports_every_dropped_key(stock_idefics2, tmp_path, tiny_processor,
                                                                           capsys):
    source, stock_model = stock_idefics2
    release = _release_layout(source, tmp_path, {
        "model.ia_logit_scale": torch.tensor(math.log(1 / 0.03)),
        "model.ac_logit_scale": torch.tensor(math.log(1 / 0.05)),
        "model.vision_projector.weight": torch.zeros(4, 4),
        "model.text_projector.bias": torch.zeros(4),
        "model.mystery_head.weight": torch.zeros(2),
    })
    output = tmp_path / "converted"
    assert main(["convert", str(release), str(output)]) == 0
    printed = capsys.readouterr().out
    for key in ("model.vision_projector.weight", "model.text_projector.bias", "model.mystery_head.weight"):
        assert key in printed
    assert "1 key(s) could not be mapped" in printed

    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True).eval()
    scales = model.get_logit_scales()
    assert scales["object_attribute"].item() == pytest.approx(1 / 0.03, rel=1e-5)
    assert scales["attribute_category"].item() == pytest.approx(1 / 0.05, rel=1e-5)
    torch.testing.assert_close(_logits(model, tiny_processor), _logits(stock_model, tiny_processor))
    _assert_same_idefics2_weights(model, stock_model)
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["source_format"] == "finedefics-release"
    assert set(report["dropped"]) == {"model.vision_projector.weight", "model.text_projector.bias"}
    assert report["unmapped"] == ["model.mystery_head.weight"]


def test_release_temperature_keys_are_converted_from_tau(stock_idefics2, tmp_path):
    source, _ = stock_idefics2
    release = _release_layout(source, tmp_path,
                              {"model.ia_temp": torch.tensor(0.02), "model.ac_temp": torch.tensor(0.1)})
    output = tmp_path / "converted"
    assert main(["convert", str(release), str(output)]) == 0
    scales = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True).get_logit_scales()
    assert scales["object_attribute"].item() == pytest.approx(50.0, rel=1e-5)
    assert scales["attribute_category"].item() == pytest.approx(10.0, rel=1e-5)


def test_convert_refuses_pickled_or_missing_weights(stock_idefics2, tmp_path, capsys):
    source, _ = stock_idefics2
    state = load_file(source / "model.safetensors")
    torch.save(state, source / "pytorch_model.bin")
    (source / "model.safetensors").unlink()
    assert main(["convert", str(source), str(tmp_path / "out")]) == 2
    assert "no .safetensors weights" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    assert f"model folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
