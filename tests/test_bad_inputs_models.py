"""Bad models, checkpoints, recipes and command lines: each is refused with an error that names what is wrong."""

import pytest
import torch
from PIL import Image


def _image_inputs(processor, colours=("red", "blue")):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which bird is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [[Image.new("RGB", (64, 64), colour)] for colour in colours]
    return processor(images=images, text=[prompt] * len(colours), return_tensors="pt", padding=True)


# ----------------------------------------------------------------- pixel values
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixel_values_are_refused_naming_the_batch_row(micro_model, tiny_processor, bad_value):
    inputs = _image_inputs(tiny_processor)
    inputs["pixel_values"][1, 0, 2, 5, 7] = bad_value
    pattern = r"pixel_values hold NaN or inf values in batch row\(s\) \[1\]"
    with torch.no_grad():
        with pytest.raises(ValueError, match=pattern):
            micro_model(**inputs)
        with pytest.raises(ValueError, match=pattern):
            micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        with pytest.raises(ValueError, match=pattern):
            micro_model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_finite_pixel_values_still_give_finite_embeddings(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor)
    with torch.no_grad():
        embeds = micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        loss = micro_model(**inputs, labels=inputs["input_ids"]).loss
    assert torch.isfinite(embeds).all() and torch.isfinite(loss)


def test_channels_last_4d_pixel_values_name_the_expected_shape(micro_model, tiny_processor):
    pixel_values = _image_inputs(tiny_processor)["pixel_values"][:, 0]  # (2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, n_images, 3, height, width\) or "
                                         r"\(batch, 3, height, width\), got shape \(2, 64, 64, 3\)"):
        micro_model.get_image_embeddings(pixel_values.permute(0, 2, 3, 1))


def test_pixel_attention_mask_of_another_shape_names_both_shapes(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor)
    with pytest.raises(ValueError, match=r"pixel_attention_mask has shape \(2, 64, 64\), expected \(2, 1, 64, 64\)"):
        micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"][:, 0])
