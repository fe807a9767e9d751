"""The Finedefics mechanism for families whose base model merges images itself (Idefics3, SmolVLM, Qwen2-VL,
Qwen2.5-VL, LLaVA): ``FinedeficsMultimodalMixin``, shared by every family file but Idefics2's.

Image embedding. The image-summary row is the family's REAL token sequence for one image, as its own
processor writes it (``processor.image_embedding_inputs``: the expanded image placeholder followed by the
summary token, no BOS, as Idefics2's summary row has none), run through the family's multimodal base model
``self.model(input_ids, pixel_values, ...)`` with the pixels, and pooled at the last real position. Why this
rather than Idefics2's "image features + summary embedding through the text model": the families place
image tokens in ways the features alone do not carry, and the base model is the one place that gets them
right, the same way as for generation:
- Qwen2-VL / Qwen2.5-VL: 3-D rotary positions (``get_rope_index`` from ``image_grid_thw`` and
  ``mm_token_type_ids``) and a variable number of image tokens per image, wrapped in
  ``<|vision_start|>`` / ``<|vision_end|>``;
- Idefics3 / SmolVLM: image splitting into a grid of sub-images plus a global image, pixel shuffle, and
  the ``<fake_token_around_image>`` / ``<row_i_col_j>`` / ``<global-img>`` tokens between them;
- LLaVA: the placeholder expanded to one token per patch (CLS dropped under the "default" strategy).
So an image embedding is exactly the decoder state a prompt with that image reaches at its next token.

Text embedding: as for Idefics2 (the shared ``FinedeficsAlignmentMixin``, ``alignment.py``): the text rows are
moved to the right (left padding then gives the same result), run through the decoder stack with 1-D positions (for
Qwen's mrope, text-only positions are the same on all three axes, as ``get_rope_index`` gives them) and
pooled at the last real token.

This file ships inside every Finedefics checkpoint of these families (``trust_remote_code``); it imports
nothing from the rest of the Finedefics repository.
"""

from __future__ import annotations

import inspect

import torch

from .alignment import FinedeficsAlignmentMixin, FinedeficsEmbeddingOutput


class FinedeficsMultimodalMixin(FinedeficsAlignmentMixin):
    """Finedefics for a stock ``XForConditionalGeneration`` whose ``self.model`` takes pixels and input ids.

    A family class is ``(FinedeficsMultimodalMixin, StockForConditionalGeneration)`` plus its few
    differences: which keyword arguments carry its pixels (``image_input_names``), the pixel layouts it
    accepts (``pixel_values_dims``), where its vision tower is, and any per-token input its base model needs
    for a summary row (``_summary_row_inputs``, Qwen's ``mm_token_type_ids``).
    """

    image_input_names: tuple[str, ...] = ("pixel_values",)
    pixel_values_dims: tuple[int, ...] = (4,)
    per_token_input_names: tuple[str, ...] = ("mm_token_type_ids",)  # moved with the tokens when re-aligning rows

    stock_key_mapping: dict[str, str] | None = None  # checkpoint renames the stock class gets and a subclass does not

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _expose_stock_forward_signature(cls)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if cls.stock_key_mapping and kwargs.get("key_mapping") is None:
            kwargs["key_mapping"] = dict(cls.stock_key_mapping)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ------------------------------------------------------------- embeddings
    def get_image_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             mm_encoder_outputs: dict | None = None, **image_inputs) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)`` from ``processor.image_embedding_inputs(images)``.

        Args:
            input_ids / attention_mask: one image-summary row per image (placeholder expanded, summary last).
            mm_encoder_outputs: ``{"image": outputs.image_outputs}`` of a forward over the same images in the
                same order, to reuse its vision features instead of running the vision tower again.
            **image_inputs: the family's pixel inputs (``pixel_values`` and ``image_grid_thw`` /
                ``pixel_attention_mask`` / ``image_sizes``) and ``mm_token_type_ids`` where the family has them.
        """
        image_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **image_inputs}
        return self.get_embeddings(image_inputs=image_inputs, mm_encoder_outputs=mm_encoder_outputs).image_embeds

    def get_embeddings(self, image_inputs: dict | None = None, input_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None,
                       mm_encoder_outputs: dict | None = None) -> FinedeficsEmbeddingOutput:
        """Image embeddings (from ``image_inputs``, the processor's ``image_embedding_inputs``) and text
        embeddings (``input_ids`` from ``tokenize_texts``). Image rows run through the multimodal base model,
        text rows through the decoder in at most two length buckets."""
        if image_inputs is None and input_ids is None:
            raise ValueError("get_embeddings needs image_inputs or input_ids")
        image_embeds = text_embeds = None
        if image_inputs is not None:
            pooled_images = self._pool_image_rows(image_inputs, mm_encoder_outputs)
            image_embeds = self._project(pooled_images, self.image_projection)
        if input_ids is not None:
            rows, mask = self._text_rows(input_ids, attention_mask)
            text_embeds = self._project(self._pool_in_length_buckets(rows, mask), self.text_projection)
        return FinedeficsEmbeddingOutput(image_embeds=image_embeds, text_embeds=text_embeds)

    def _pool_image_rows(self, image_inputs: dict, mm_encoder_outputs: dict | None = None) -> torch.Tensor:
        inputs = {key: value for key, value in dict(image_inputs).items() if value is not None}
        input_ids = inputs.pop("input_ids", None)
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError("image embeddings need the image-summary rows (input_ids) of "
                             "processor.image_embedding_inputs(images)")
        attention_mask = inputs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if inputs.get("pixel_values") is not None:
            self._check_pixel_values(inputs["pixel_values"])
        elif mm_encoder_outputs is None:
            raise ValueError("image embeddings need pixel_values (or mm_encoder_outputs of a forward pass)")
        # Right-align every row (a stable sort moves padding to the end, tokens keep their order), so the
        # last real position is ``sum(mask) - 1`` and positions start at 0 whatever the padding side.
        order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
        input_ids, attention_mask = torch.gather(input_ids, 1, order), torch.gather(attention_mask, 1, order)
        for name in self.per_token_input_names:
            if name in inputs:
                inputs[name] = torch.gather(inputs[name], 1, order)
        last = attention_mask.sum(dim=1) - 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        image_tokens = (input_ids == self.config.image_token_id).sum(dim=1)
        if (image_tokens == 0).any() or (input_ids[rows, last] != self.summary_token_id).any():
            raise ValueError("each image-summary row must hold its image's placeholder tokens and end with the "
                             f"summary token (id {self.summary_token_id}); build them with "
                             "processor.image_embedding_inputs")
        if mm_encoder_outputs is not None:
            inputs.pop("pixel_values", None)
            inputs["mm_encoder_outputs"] = dict(mm_encoder_outputs)  # the base model fills in missing entries
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True,
                            **inputs).last_hidden_state
        return hidden[rows, last]

    def _embed_images_for_classify(self, images, processor) -> torch.Tensor:
        inputs = processor.image_embedding_inputs(images).to(self.device)
        if torch.is_floating_point(inputs["pixel_values"]):
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return self.get_image_embeddings(**inputs)

    def _summary_row_inputs(self, summary_input_ids: torch.Tensor) -> dict:
        """Per-token inputs the base model needs beside the ids of a summary row (none by default)."""
        return {}

    # -------------------------------------------------------------- generation
    def forward(self, input_ids=None, attention_mask=None, contrastive_input_ids=None,
                contrastive_attention_mask=None, summary_input_ids=None, summary_attention_mask=None, **kwargs):
        """The stock forward, after the pixel checks.

        With ``contrastive_input_ids`` (texts from ``tokenize_texts``) the output also carries ``text_embeds``
        and ``logit_scales``; with ``summary_input_ids`` (the image-summary rows of the SAME images as this
        call's pixels, in the same order: ``image_embedding_inputs(images)["input_ids"]``) it carries
        ``image_embeds``, reusing this pass's vision features (the vision tower runs once).
        """
        if kwargs.get("pixel_values") is not None:
            self._check_pixel_values(kwargs["pixel_values"])
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if contrastive_input_ids is None and summary_input_ids is None:
            return outputs
        image_inputs = mm_encoder_outputs = None
        if summary_input_ids is not None:
            image_inputs = {"input_ids": summary_input_ids, "attention_mask": summary_attention_mask,
                            **{name: kwargs.get(name) for name in self.image_input_names},
                            **self._summary_row_inputs(summary_input_ids)}
            if getattr(outputs, "image_outputs", None) is not None:
                mm_encoder_outputs = {"image": outputs.image_outputs}
        embeddings = self.get_embeddings(image_inputs, contrastive_input_ids, contrastive_attention_mask,
                                         mm_encoder_outputs=mm_encoder_outputs)
        outputs["image_embeds"] = embeddings.image_embeds
        outputs["text_embeds"] = embeddings.text_embeds
        outputs["logit_scales"] = self.get_logit_scales()
        return outputs

    def generate(self, *args, **kwargs):
        """``GenerationMixin.generate`` after the pixel checks of ``forward``."""
        if kwargs.get("pixel_values") is not None:
            self._check_pixel_values(kwargs["pixel_values"])
        return super().generate(*args, **kwargs)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Clear errors for pixels of the wrong layout and for NaN / inf pixels (which would give NaN losses)."""
        if pixel_values.dim() not in self.pixel_values_dims:
            dims = " or ".join(map(str, self.pixel_values_dims))
            raise ValueError(f"{type(self).__name__} takes pixel_values with {dims} "
                             f"dimensions as its processor returns them, got shape {tuple(pixel_values.shape)}")
        if torch.is_floating_point(pixel_values) and not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values hold NaN or inf values; check the images and the image processor's "
                             "normalisation (a zero std gives inf)")


def _expose_stock_forward_signature(cls) -> None:
    """Give a family class a ``forward`` whose signature lists the stock ``forward``'s arguments too.

    ``FinedeficsMultimodalMixin.forward`` passes the stock arguments (``pixel_values``, ``position_ids``,
    ``image_grid_thw``, ...) through ``**kwargs``; but ``generate`` reads ``forward``'s signature to decide
    whether to compute left-padding-aware ``position_ids`` (Qwen: its 3-D ones), to pass ``logits_to_keep`` and
    to encode images before the prefill, and refuses keyword arguments it does not list ("not used by the
    model"), and the Trainer drops dataset columns it does not list. The class gets a thin wrapper around the
    mixin's ``forward`` (same behaviour) with the stock parameters followed by the Finedefics ones.
    """
    mixin_forward = FinedeficsMultimodalMixin.forward
    if getattr(cls, "forward", None) is not mixin_forward:
        return  # a family that defines its own forward, or already wrapped
    stock_forward = next((vars(base)["forward"] for base in cls.__mro__
                          if "forward" in vars(base) and not issubclass(base, FinedeficsMultimodalMixin)), None)
    if stock_forward is None:
        return  # a mixin between FinedeficsMultimodalMixin and the stock class (``_FinedeficsQwenMixin``)
    stock = inspect.signature(stock_forward).parameters
    ours = inspect.signature(mixin_forward).parameters
    parameters = [p for p in stock.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    parameters += [p.replace(kind=p.KEYWORD_ONLY) for name, p in ours.items()
                   if name not in stock and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"]
    parameters.append(ours["kwargs"])

    def forward(self, *args, **kwargs):
        return mixin_forward(self, *args, **kwargs)

    forward.__signature__ = inspect.Signature(parameters)
    forward.__doc__, forward.__name__, forward.__qualname__ = (mixin_forward.__doc__, "forward",
                                                                f"{cls.__qualname__}.forward")
    cls.forward = forward


def inherit_conversion_mapping(finedefics_class, stock_class) -> None:
    """Give a Finedefics class the stock class's checkpoint key conversions (transformers looks them up by class
    name, then by ``model_type``), so a stock checkpoint in the layout transformers writes and reads for the stock
    class (often an older one: ``save_pretrained`` reverses the conversions) loads into the Finedefics class."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # an older transformers without the registry
        return
    for ours, theirs in ((finedefics_class.__name__, stock_class.__name__),
                         (finedefics_class.config_class.model_type, stock_class.config_class.model_type)):
        mapping = get_checkpoint_conversion_mapping(theirs)
        if mapping is not None:
            register_checkpoint_conversion_mapping(ours, mapping, overwrite=True)


__all__ = ["FinedeficsMultimodalMixin", "inherit_conversion_mapping"]
