"""What Finedefics adds to a stock transformers image-text-to-text model, written once for every family:
``FinedeficsAlignmentMixin`` (projection heads, learnable temperatures, text embeddings pooled at the last real
token, ``embed_labels`` and ``classify``), the temperatures module and the embedding outputs.

Every family's model file imports it (``modeling_finedefics.py`` for Idefics2, ``multimodal.py`` for the others).
This file ships inside every Finedefics checkpoint (``trust_remote_code``); it imports nothing from the rest of the
Finedefics repository.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_finedefics import FinedeficsAlignmentConfig

TEMPERATURE_NAMES = ("object_attribute", "attribute_category")
WEIGHT_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json")


class FinedeficsTemperatures(nn.Module):
    """Learnable logit scales of the contrastive terms, stored as ``log(1 / tau)`` (as CLIP does).

    A module of its own (not bare parameters on the model) so that PEFT can train and save it with
    an adapter through ``modules_to_save``.
    """

    def __init__(self, config: FinedeficsAlignmentConfig):
        super().__init__()
        self.min_temperature = config.min_temperature
        self.max_temperature = config.max_temperature
        # Scalars, as every checkpoint stores them. Sharding engines cannot split a 0-dim parameter (DeepSpeed
        # ZeRO-3 broadcasts each one viewed as bytes, FSDP shards along dim 0): a model built under ZeRO-3 holds them
        # as 1-element vectors (``as_vectors`` for FSDP), a stored value of either shape loads into either, and
        # the trainer saves scalars (``temperatures_as_scalars``).
        shape = (1,) if _built_under_zero3() else ()
        self.object_attribute = nn.Parameter(torch.empty(shape))
        self.attribute_category = nn.Parameter(torch.empty(shape))
        self.register_load_state_dict_pre_hook(_temperatures_to_own_shape)

    def as_vectors(self) -> None:
        """Hold the temperatures as 1-element vectors (the same parameters, for a sharding engine)."""
        for name in TEMPERATURE_NAMES:
            parameter = getattr(self, name)
            if parameter.dim() == 0:
                parameter.data = parameter.data.reshape(1)

    def reset_parameters(self, temperature: float) -> None:
        with torch.no_grad():
            for name in TEMPERATURE_NAMES:
                getattr(self, name).fill_(math.log(1.0 / temperature))

    def forward(self) -> dict[str, torch.Tensor]:
        """Clamped logit scales ``1 / tau`` by name; the clamp keeps the gradient inside the range."""
        max_log_scale = math.log(1.0 / self.min_temperature)
        min_log_scale = math.log(1.0 / self.max_temperature)
        return {name: getattr(self, name).clamp(min_log_scale, max_log_scale).exp().reshape(())
                for name in TEMPERATURE_NAMES}


def _built_under_zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def temperature_key(key: str) -> bool:
    """Whether a state-dict key names a temperature (PEFT's ``modules_to_save`` copies included)."""
    head, _, name = key.rpartition(".")
    return name in TEMPERATURE_NAMES and "temperatures" in head.split(".")


def _temperatures_to_own_shape(module, state_dict, prefix, *args) -> None:
    """A stored temperature (scalar, or a 1-element vector saved under ZeRO-3) in the shape of this module's."""
    for name in TEMPERATURE_NAMES:
        value = state_dict.get(prefix + name)
        if value is not None and value.numel() == 1:
            parameter = getattr(module, name)
            state_dict[prefix + name] = value.reshape(getattr(parameter, "ds_shape", parameter.shape))


def temperatures_as_scalars(state_dict: dict) -> dict:
    """``state_dict`` with its 1-element temperatures as the scalars every checkpoint stores."""
    return {key: value.reshape(()) if temperature_key(key) and value.dim() == 1 and value.numel() == 1 else value
            for key, value in state_dict.items()}


@dataclass
class FinedeficsEmbeddingOutput(ModelOutput):
    """Global embeddings of one batched decoder pass over image-summary and text rows."""

    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


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


__all__ = ["FinedeficsAlignmentMixin", "FinedeficsClassificationOutput", "FinedeficsEmbeddingOutput",
           "FinedeficsTemperatures"]
