"""Finedefics model: Idefics2 generation unchanged, plus the global embeddings and learnable
temperatures that attribute-augmented alignment trains.

Global embeddings are read from the decoder itself (as in the Finedefics paper): a sequence is run
through the language model and the final hidden state of a summary token (EOS by default) is
L2-normalised.
- image embedding: the resampled image tokens followed by the summary token;
- text embedding (attribute description, category name): the text followed by the summary token,
  pooled at the last real token of each row, so left and right padding give the same result.

The model provides representations; the contrastive objectives live in the training package.
This file ships inside every Finedefics checkpoint (``trust_remote_code``); it imports nothing from
the rest of the Finedefics repository.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Idefics2ForConditionalGeneration
from transformers.models.idefics2.modeling_idefics2 import Idefics2CausalLMOutputWithPast, Idefics2Connector

from .alignment import FinedeficsAlignmentMixin, FinedeficsEmbeddingOutput, FinedeficsTemperatures
from .configuration_finedefics import FinedeficsConfig


class FinedeficsConnector(Idefics2Connector):
    """Idefics2's connector (modality projection + perceiver resampler), checkpointed in sub-image chunks.

    It runs over every padded patch of up to five sub-images per row (4,900 patches each at 980 px), and
    Idefics2 does not checkpoint it: at 8B its activations outweigh the decoder's. Sub-images are
    independent here, so under activation checkpointing a batch with more than ``checkpoint_patch_budget``
    patch positions is cut into chunks of whole sub-images within that budget (one 980 px sub-image at
    most, at 8B), each a checkpoint of its own: backward keeps the inputs and recomputes one chunk at a
    time. A smaller batch (the tiny CPU models') runs as before, unchunked and unrecomputed. Same
    parameters, same names, same outputs.
    """

    gradient_checkpointing = False  # set by ``activation_checkpointing_enable`` with the model's checkpoint function
    checkpoint_patch_budget = 4096  # patch positions per chunk; at 8B width about 2 GB of activations

    def forward(self, image_hidden_states, attention_mask):
        forward = super().forward
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        per_chunk = self.sub_images_per_checkpoint(*image_hidden_states.shape[:2])
        if not checkpointing or per_chunk is None:
            return forward(image_hidden_states, attention_mask)
        reentrant = getattr(self._gradient_checkpointing_func, "keywords", {}).get("use_reentrant")
        if reentrant and not image_hidden_states.requires_grad and any(p.requires_grad for p in self.parameters()):
            # A reentrant checkpoint (PEFT under DeepSpeed ZeRO-3 needs one) whose inputs need no gradient
            # gives its parameters none either; a frozen vision tower's output is such an input.
            image_hidden_states = image_hidden_states.detach().requires_grad_(True)
        pieces = [
            self._gradient_checkpointing_func(forward, image_hidden_states[start:start + per_chunk],
                                              attention_mask[start:start + per_chunk])
            for start in range(0, image_hidden_states.shape[0], per_chunk)
        ]
        return torch.cat(pieces, dim=0)

    @classmethod
    def sub_images_per_checkpoint(cls, sub_images: int, patches: int) -> int | None:
        """Sub-images per checkpointed chunk, or None when the batch is within the budget (no chunking)."""
        if sub_images * patches <= cls.checkpoint_patch_budget:
            return None
        return max(1, cls.checkpoint_patch_budget // patches)


@dataclass
class FinedeficsCausalLMOutputWithPast(Idefics2CausalLMOutputWithPast):
    """Idefics2's output plus, when contrastive texts were passed to ``forward``, the global embeddings
    of the batch's images and of those texts (from one extra decoder pass) and the logit scales."""

    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logit_scales: dict[str, torch.Tensor] | None = None


class FinedeficsForConditionalGeneration(FinedeficsAlignmentMixin, Idefics2ForConditionalGeneration):
    """Idefics2 with Finedefics' global embeddings, projection heads and learnable temperatures.

    ``forward`` and ``generate`` are Idefics2's, with clearer errors on mismatched image inputs.
    Image embeddings: the resampled image tokens (the connector's output, what the decoder sees for an
    image) followed by the summary token's input embedding, through the decoder.
    """

    config_class = FinedeficsConfig
    config: FinedeficsConfig

    def __init__(self, config: FinedeficsConfig):
        super().__init__(config)
        self.model.connector = FinedeficsConnector(config)
        self._add_alignment_modules(config)
        self.post_init()

    def _decoder(self) -> nn.Module:
        return self.model.text_model

    def _embed_images_for_classify(self, images, processor) -> torch.Tensor:
        image_inputs = processor.image_processor([[image] for image in images], return_tensors="pt")
        image_inputs = image_inputs.to(self.device)
        return self.get_image_embeddings(
            image_inputs["pixel_values"].to(self.dtype), image_inputs.get("pixel_attention_mask")
        )

    # --------------------------------------------------------------- embeddings
    def get_image_embeddings(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        image_features: list[torch.Tensor] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)``: resampled image tokens + summary token through the decoder.

        Args:
            pixel_values: ``(B, n_images, 3, H, W)`` as the processor returns them (or ``(B, 3, H, W)``).
            pixel_attention_mask: the processor's pixel mask, if any.
            image_features: resampled image features already computed by a forward pass
                (``outputs.image_outputs.pooler_output``, a per-sample list); when given, the vision
                tower is not run again.
        """
        return self.get_embeddings(pixel_values, pixel_attention_mask, image_features=image_features).image_embeds

    def get_image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                           **kwargs):
        """Idefics2's vision tower + connector, after the image checks of ``forward``.

        Its ``pooler_output`` (one ``(tokens, hidden)`` tensor per row) is what ``forward`` and ``generate``
        take as ``mm_encoder_outputs={"image": output}`` and ``get_image_embeddings`` as ``image_features``:
        encode a batch's images once and use them for generation, scoring and embeddings alike.
        """
        self._check_pixel_values(pixel_values, pixel_attention_mask)
        return super().get_image_features(pixel_values, pixel_attention_mask, **kwargs)


    def get_embeddings(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_features: list[torch.Tensor] | torch.Tensor | None = None,
    ) -> FinedeficsEmbeddingOutput:
        """Image and text embeddings in ONE decoder pass: image-summary rows and text rows share a batch.

        This is what makes a contrastive training step cheap: descriptions, negatives, category names
        and image summaries share the decoder calls (at most two, grouped by length to limit padding),
        not one call per kind.
        """
        if pixel_values is not None and image_features is None:
            image_features = self._image_features(pixel_values, pixel_attention_mask)
        rows, masks = [], []
        num_images = 0
        if image_features is not None:
            image_rows, image_mask = self._image_summary_rows(image_features)
            rows.append(image_rows)
            masks.append(image_mask)
            num_images = image_rows.shape[0]
        if input_ids is not None:
            text_rows, text_mask = self._text_rows(input_ids, attention_mask)
            rows.append(text_rows)
            masks.append(text_mask)
        if not rows:
            raise ValueError("get_embeddings needs pixel_values, image_features or input_ids")
        inputs_embeds, mask = _concat_right_padded(rows, masks)
        pooled = self._pool_in_length_buckets(inputs_embeds, mask)
        image_embeds = self._project(pooled[:num_images], self.image_projection) if num_images else None
        text_embeds = self._project(pooled[num_images:], self.text_projection) if input_ids is not None else None
        return FinedeficsEmbeddingOutput(image_embeds=image_embeds, text_embeds=text_embeds)


    def _image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None):
        self._check_pixel_values(pixel_values, pixel_attention_mask, allow_single_image=True)
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
            if pixel_attention_mask is not None:
                pixel_attention_mask = pixel_attention_mask.unsqueeze(1)
        outputs = self.model.get_image_features(pixel_values, pixel_attention_mask, return_dict=True)
        return outputs.pooler_output

    def _image_summary_rows(self, image_features) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: its resampled image tokens followed by the summary token's input embedding."""
        if isinstance(image_features, torch.Tensor):
            image_features = list(image_features) if image_features.dim() == 3 else [image_features]
        if any(features.shape[0] == 0 for features in image_features):
            raise ValueError("every sample needs at least one real image to compute an image embedding")
        summary = self._summary_embedding(image_features[0])
        rows = [torch.cat([features.to(summary.dtype), summary], dim=0) for features in image_features]
        return _right_pad(rows)


    # -------------------------------------------------------------- generation
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.BoolTensor | None = None,
        mm_encoder_outputs=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        contrastive_input_ids: torch.LongTensor | None = None,
        contrastive_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """Idefics2's forward, after checking that image tokens and images match.

        With ``contrastive_input_ids`` (texts ending in the summary token, e.g. from
        ``FinedeficsProcessor.tokenize_texts``), the output also carries ``image_embeds`` (reusing this
        pass's image features, so the vision tower runs once), ``text_embeds`` and ``logit_scales``.
        Computing them inside ``forward`` keeps every use of the weights inside one call, which is what
        DDP and DeepSpeed expect.
        """
        if pixel_values is not None:
            self._check_pixel_values(pixel_values, pixel_attention_mask)
        if input_ids is not None and pixel_values is not None:
            self._check_image_tokens(input_ids, pixel_values)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            mm_encoder_outputs=mm_encoder_outputs,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if contrastive_input_ids is None:
            return outputs
        image_features = outputs.image_outputs.pooler_output if outputs.image_outputs is not None else None
        embeddings = self.get_embeddings(
            input_ids=contrastive_input_ids, attention_mask=contrastive_attention_mask, image_features=image_features
        )
        return FinedeficsCausalLMOutputWithPast(
            **outputs, image_embeds=embeddings.image_embeds, text_embeds=embeddings.text_embeds,
            logit_scales=self.get_logit_scales(),
        )

    def generate(self, *args, **kwargs):
        """``GenerationMixin.generate`` after the image checks of ``forward``.

        Generation encodes the images before its first ``forward`` call (``mm_encoder_outputs``), so
        ``forward`` never sees ``pixel_values`` here: they are checked on the way in.
        """
        if kwargs.get("pixel_values") is not None:
            self._check_pixel_values(kwargs["pixel_values"], kwargs.get("pixel_attention_mask"))
        return super().generate(*args, **kwargs)

    def _check_pixel_values(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None,
                            allow_single_image: bool = False) -> None:
        """Clear errors for images of the wrong layout and for NaN / inf pixels.

        Non-finite pixels would otherwise flow through to a NaN loss, NaN embeddings and ``<unk>``
        generations; one ``isfinite`` reduction per batch is cheap next to the vision tower.
        """
        channels = self.config.vision_config.num_channels
        layouts = "(batch, n_images, 3, height, width)"
        layouts += " or (batch, 3, height, width)" if allow_single_image else ""
        dims = (4, 5) if allow_single_image else (5,)
        shape = tuple(pixel_values.shape)
        if pixel_values.dim() not in dims or shape[-3] != channels:
            hint = " (channels last?)" if pixel_values.dim() in dims and shape[-1] == channels else ""
            raise ValueError(f"pixel_values must be {layouts}, got shape {shape}{hint}")
        if pixel_attention_mask is not None:
            expected = shape[:-3] + shape[-2:]
            if tuple(pixel_attention_mask.shape) != expected:
                raise ValueError(f"pixel_attention_mask has shape {tuple(pixel_attention_mask.shape)}, expected "
                                 f"{expected} (pixel_values of shape {shape} without the channel axis)")
        if not torch.isfinite(pixel_values).all():
            bad_rows = (~torch.isfinite(pixel_values)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"pixel_values hold NaN or inf values in batch row(s) {bad_rows}; check the images and "
                             "the image processor's normalisation (a zero std gives inf)")

    def _check_image_tokens(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """A clear error when the prompts' image tokens and the images passed do not match."""
        if input_ids.shape[1] == 1:  # a decoding step: images were merged at the prefill
            return
        real_images = (pixel_values != 0).flatten(2).any(dim=-1).sum(dim=1)
        image_tokens = (input_ids == self.config.image_token_id).sum(dim=1)
        expected = real_images * self.config.perceiver_config.resampler_n_latents
        if pixel_values.shape[0] != input_ids.shape[0] or not torch.equal(image_tokens, expected):
            raise ValueError(
                f"image tokens and images do not match: the prompts hold {image_tokens.tolist()} image tokens, "
                f"the images need {expected.tolist()} ({self.config.perceiver_config.resampler_n_latents} per image). "
                "Put one <image> placeholder per image in the text and let the processor expand it."
            )



def _right_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(row.shape[0] for row in rows)
    padded = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return padded, mask


def _concat_right_padded(rows: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack right-padded blocks of different lengths into one right-padded batch."""
    length = max(block.shape[1] for block in rows)
    dtype = rows[0].dtype
    padded = [F.pad(block.to(dtype), (0, 0, 0, length - block.shape[1])) for block in rows]
    padded_masks = [F.pad(mask, (0, length - mask.shape[1])) for mask in masks]
    return torch.cat(padded), torch.cat(padded_masks)


__all__ = ["FinedeficsAlignmentMixin", "FinedeficsForConditionalGeneration", "FinedeficsTemperatures"]  # re-exported
