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

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Idefics2ForConditionalGeneration
from transformers.models.idefics2.modeling_idefics2 import Idefics2CausalLMOutputWithPast, Idefics2Connector
from transformers.utils import ModelOutput

from .configuration_finedefics import FinedeficsConfig

TEMPERATURE_NAMES = ("object_attribute", "attribute_category")
WEIGHT_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json")


class FinedeficsTemperatures(nn.Module):
    """Learnable logit scales of the contrastive terms, stored as ``log(1 / tau)`` (as CLIP does).

    A module of its own (not bare parameters on the model) so that PEFT can train and save it with
    an adapter through ``modules_to_save``.
    """

    def __init__(self, config: FinedeficsConfig):
        super().__init__()
        self.min_temperature = config.min_temperature
        self.max_temperature = config.max_temperature
        self.object_attribute = nn.Parameter(torch.empty(()))
        self.attribute_category = nn.Parameter(torch.empty(()))

    def reset_parameters(self, temperature: float) -> None:
        with torch.no_grad():
            for name in TEMPERATURE_NAMES:
                getattr(self, name).fill_(math.log(1.0 / temperature))

    def forward(self) -> dict[str, torch.Tensor]:
        """Clamped logit scales ``1 / tau`` by name; the clamp keeps the gradient inside the range."""
        max_log_scale = math.log(1.0 / self.min_temperature)
        min_log_scale = math.log(1.0 / self.max_temperature)
        return {
            name: getattr(self, name).clamp(min_log_scale, max_log_scale).exp() for name in TEMPERATURE_NAMES
        }


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
class FinedeficsEmbeddingOutput(ModelOutput):
    """Global embeddings of one batched decoder pass over image-summary and text rows."""

    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


@dataclass
class FinedeficsCausalLMOutputWithPast(Idefics2CausalLMOutputWithPast):
    """Idefics2's output plus, when contrastive texts were passed to ``forward``, the global embeddings
    of the batch's images and of those texts (from one extra decoder pass) and the logit scales."""

    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logit_scales: dict[str, torch.Tensor] | None = None


@dataclass
class FinedeficsClassificationOutput(ModelOutput):
    """Zero-shot recognition result: per image, the top labels and their softmax scores."""

    labels: list[list[str]] | None = None
    scores: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    logits: torch.Tensor | None = None

class FinedeficsAlignmentMixin:
    """What Finedefics adds to a stock transformers image-text-to-text model, written once for every family.

    Projection heads, learnable temperatures (float32 whatever the model's dtype), safetensors-only loading,
    ``enable_input_require_grads`` that keeps a frozen vision tower out of the graph, text embeddings pooled
    at the last real token of each row, ``embed_labels`` and ``classify``. A family class is
    ``(FinedeficsAlignmentMixin or a subclass, StockForConditionalGeneration)``; it calls
    ``self._add_alignment_modules(config)`` before ``post_init`` and says where its parts are:
    ``_decoder`` (the text model run for embeddings), ``_vision_tower``, and how ``classify`` embeds images
    (``_embed_images_for_classify``). Image embeddings are the family's own (``get_image_embeddings``).
    """

    # Loaded in float32 whatever the model's dtype: a bf16 logit scale of ~2.66 moves in steps of 0.0156,
    # so the ~2e-4 updates it gets would round away (and the heads feed float32 losses anyway).
    _keep_in_fp32_modules_strict = ["temperatures", "image_projection", "text_projection"]

    def _add_alignment_modules(self, config) -> None:
        hidden_size = config.get_text_config().hidden_size
        if config.embed_dim > 0:
            self.image_projection = nn.Linear(hidden_size, config.embed_dim, bias=False)
            self.text_projection = nn.Linear(hidden_size, config.embed_dim, bias=False)
        else:
            self.image_projection = None
            self.text_projection = None
        self.temperatures = FinedeficsTemperatures(config)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FinedeficsTemperatures):
            module.reset_parameters(self.config.init_temperature)

    # ------------------------------------------------------------- family parts
    def _decoder(self) -> nn.Module:
        """The decoder stack (no LM head) that embeddings are pooled from."""
        return self.model.language_model

    def _vision_tower(self) -> nn.Module:
        return self.model.vision_model

    def _vision_input_embeddings(self) -> nn.Module:
        """The vision tower's first module: the hook that makes its output require grad sits on it."""
        return self._vision_tower().get_input_embeddings()

    def _embed_images_for_classify(self, images, processor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that never unpickles and names a missing weight file."""
        kwargs.setdefault("use_safetensors", True)
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not kwargs.get("gguf_file") and not kwargs.get("subfolder"):
            if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILE_NAMES):
                raise ValueError(
                    f"Checkpoint folder {path!r} has no weights: expected one of {', '.join(WEIGHT_FILE_NAMES)}. "
                    "Finedefics loads safetensors only (pickled .bin files are never loaded)."
                )
        wants_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                      **kwargs)
        model._alignment_modules_to_float32(loading_info["missing_keys"])
        return (model, loading_info) if wants_loading_info else model

    def _alignment_modules_to_float32(self, missing_keys) -> None:
        """Float32 for the modules of ``_keep_in_fp32_modules_strict`` that the checkpoint lacked.

        transformers keeps the loaded ones in float32 but creates missing ones (a stock checkpoint has no
        temperatures) in the model's dtype; those are upcast and re-initialised at float32 precision.
        """
        for name in self._keep_in_fp32_modules_strict:
            module = getattr(self, name, None)
            if module is None or not any(key.startswith(f"{name}.") for key in missing_keys):
                continue
            module.float()
            if isinstance(module, FinedeficsTemperatures):
                module.reset_parameters(self.config.init_temperature)

    def enable_input_require_grads(self):
        """Make the decoder's input embeddings require grad (what PEFT and gradient checkpointing need).

        transformers' version hooks every input embedding, the vision tower's too: with the tower frozen
        (the default) that kept all its activations and back-propagated through its layers for nothing.
        The vision hook here asks for gradients only while some vision parameter trains.
        """
        vision_model = self._vision_tower()

        def require_grads(module, inputs, output):
            output.requires_grad_(True)

        def require_grads_if_vision_trains(module, inputs, output):
            if any(parameter.requires_grad for parameter in vision_model.parameters()):
                output.requires_grad_(True)

        self._require_grads_hooks = [
            self.get_input_embeddings().register_forward_hook(require_grads),
            self._vision_input_embeddings().register_forward_hook(require_grads_if_vision_trains),
        ]
        self._require_grads_hook = self._require_grads_hooks[0]


    # --------------------------------------------------------------- embeddings
    @property
    def summary_token_id(self) -> int:
        token_id = self.config.summary_token_id
        if token_id is None:
            raise ValueError("config.summary_token_id is not set; set it to the tokenizer's EOS id")
        return token_id

    def get_logit_scales(self) -> dict[str, torch.Tensor]:
        """Clamped logit scales ``1 / tau``: keys ``object_attribute`` and ``attribute_category``."""
        return self.temperatures()


    def get_text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)``, pooled at the last real token of each row.

        ``input_ids`` should end with the summary token (``FinedeficsProcessor.tokenize_texts`` appends
        it). Left and right padding give the same embedding.
        """
        return self.get_embeddings(input_ids=input_ids, attention_mask=attention_mask).text_embeds


    def _text_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError("input_ids must be a non-empty (batch, length) tensor, got shape "
                             f"{tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        max_positions = self.config.text_config.max_position_embeddings
        if input_ids.shape[1] > max_positions:
            raise ValueError(f"text of {input_ids.shape[1]} tokens is longer than the model's maximum of "
                             f"{max_positions}")
        if (attention_mask.sum(dim=1) == 0).any():
            raise ValueError("a text row has no real token (empty text); embeddings need at least the summary token")
        inputs_embeds = self.get_input_embeddings()(input_ids)
        # Left-padded rows are moved to the right so that every row's real tokens start at position 0.
        order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
        inputs_embeds = torch.gather(inputs_embeds, 1, order.unsqueeze(-1).expand_as(inputs_embeds))
        return inputs_embeds, torch.gather(attention_mask, 1, order)

    def _summary_embedding(self, like: torch.Tensor) -> torch.Tensor:
        token = torch.tensor([self.summary_token_id], device=like.device)
        return self.get_input_embeddings()(token)

    def _pool_in_length_buckets(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``_pool_summary`` over rows sorted by length and split in two where that saves the most padding.

        Image-summary rows (image tokens + 1) and short names would otherwise be padded to the longest
        description; the decoder's cost follows the padded token count.
        """
        lengths = attention_mask.sum(dim=1)
        order = torch.argsort(lengths)
        sorted_lengths = lengths[order].tolist()
        rows = len(sorted_lengths)
        # Padded tokens if the first k sorted rows form one bucket and the rest another.
        cost = [k * sorted_lengths[k - 1] + (rows - k) * sorted_lengths[-1] for k in range(1, rows)]
        split = 1 + min(range(len(cost)), key=cost.__getitem__) if cost else rows
        if not cost or cost[split - 1] >= 0.8 * rows * sorted_lengths[-1]:
            return self._pool_summary(inputs_embeds, attention_mask)  # not worth a second pass
        pooled = inputs_embeds.new_empty(rows, inputs_embeds.shape[-1])
        for bucket in (order[:split], order[split:]):
            width = int(lengths[bucket].max())
            pooled[bucket] = self._pool_summary(inputs_embeds[bucket, :width], attention_mask[bucket, :width]).to(
                pooled.dtype)
        return pooled

    def _pool_summary(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Decoder hidden state at the last real position of each (right-padded) row."""
        hidden = self._decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False, return_dict=True
        ).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    @staticmethod
    def _project(pooled: torch.Tensor, projection: nn.Module | None) -> torch.Tensor:
        dtype = pooled.dtype
        if projection is not None:
            pooled = projection(pooled.to(projection.weight.dtype))
        return F.normalize(pooled.float(), dim=-1).to(dtype)


    # ------------------------------------------------------------ classification
    @torch.no_grad()
    def embed_labels(self, labels: list[str], processor, batch_size: int = 256) -> torch.Tensor:
        """Unit-norm float32 embeddings ``(len(labels), dim)`` of category names, embedded in chunks.

        The one way label embeddings are made: ``classify`` and the evaluation's embedding mode both use it.
        """
        chunks = []
        for start in range(0, len(labels), batch_size):
            texts = processor.tokenize_texts(list(labels[start : start + batch_size])).to(self.device)
            chunks.append(self.get_text_embeddings(texts["input_ids"], texts["attention_mask"]).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def classify(
        self,
        images,
        candidate_labels: list[str],
        processor,
        top_k: int = 5,
        label_batch_size: int = 256,
    ) -> FinedeficsClassificationOutput:
        """Zero-shot recognition by embedding similarity between images and candidate category names.

        Args:
            images: one PIL image or image file path, or a list of them.
            candidate_labels: the category names to choose from.
            processor: the checkpoint's Finedefics processor (of the model's family).
            top_k: how many labels to return per image.

        Returns:
            ``labels`` (per image, the top-k names, best first), ``scores`` (their softmax
            probabilities at the learned attribute-category temperature), ``indices`` and the full
            ``logits`` ``(n_images, n_labels)``.
        """
        if not candidate_labels:
            raise ValueError("classify needs at least one candidate label")
        images = images if isinstance(images, (list, tuple)) else [images]
        if hasattr(processor, "load_image"):
            # The processor's loader: file paths are opened with errors naming them, every mode becomes RGB,
            # and images too small to resize are refused, as everywhere else.
            images = [processor.load_image(image) for image in images]
        image_embeds = self._embed_images_for_classify(images, processor)
        label_embeds = self.embed_labels(candidate_labels, processor, batch_size=label_batch_size)
        logits = self.get_logit_scales()["attribute_category"] * image_embeds.float() @ label_embeds.float().T
        scores, indices = logits.softmax(dim=-1).topk(min(top_k, len(candidate_labels)), dim=-1)
        labels = [[candidate_labels[i] for i in row] for row in indices.tolist()]
        return FinedeficsClassificationOutput(labels=labels, scores=scores, indices=indices, logits=logits)


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


__all__ = ["FinedeficsAlignmentMixin", "FinedeficsForConditionalGeneration", "FinedeficsTemperatures"]
