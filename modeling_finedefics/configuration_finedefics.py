"""Finedefics configuration: the alignment settings every family adds, and the Idefics2 configuration with them.

This file ships inside every Finedefics checkpoint (``trust_remote_code``); it imports nothing from
the rest of the Finedefics repository.
"""

from transformers import Idefics2Config, PreTrainedConfig


class FinedeficsAlignmentConfig(PreTrainedConfig):
    """The alignment settings every Finedefics family adds to its stock configuration.

    Not a model configuration of its own: each family's config is ``(FinedeficsAlignmentConfig, StockConfig)``
    (transformers makes every config subclass a dataclass, so these fields join the stock ones).

    Args:
        embed_dim (`int`, *optional*, defaults to 0):
            Output size of the optional linear projection heads applied to the pooled summary-token
            states. 0 means no heads: embeddings live in the decoder's hidden size.
        init_temperature (`float`, *optional*, defaults to 0.07):
            Initial temperature tau of the object-attribute and attribute-category contrastive terms
            (the logit scale is 1 / tau).
        min_temperature (`float`, *optional*, defaults to 0.01):
            Lower clamp of tau (the logit scale never exceeds 1 / min_temperature = 100, as in CLIP).
        max_temperature (`float`, *optional*, defaults to 1.0):
            Upper clamp of tau.
        summary_token_id (`int`, *optional*):
            Token appended to every sequence whose final hidden state is the global embedding.
            Defaults to the text model's EOS id (the tokenizer's EOS when the model is built with the
            package's builders or converter), never a hard-coded id.
        object_noun (`str`, *optional*):
            What the objects this model was trained on are called in its instructions ("bird", "car"), so
            that evaluation and usage ask the questions it was trained with. Set by training.
        object_noun_plural (`str`, *optional*):
            Its plural as used in the multiple-choice question ("birds", "aircraft").
        object_category_word (`str`, *optional*):
            What one of its categories is called in the open-set question ("species", "model", "breed").
        object_categories (`list[str]`, *optional*):
            The category names this model was trained on (sorted; every training run adds its data's names), so
            that an app or a user can offer them as candidates for ``classify``. Set by training.
    """

    embed_dim: int = 0
    init_temperature: float = 0.07
    min_temperature: float = 0.01
    max_temperature: float = 1.0
    summary_token_id: int | None = None
    object_noun: str | None = None
    object_noun_plural: str | None = None
    object_category_word: str | None = None
    object_categories: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.summary_token_id is None:
            eos = getattr(self.get_text_config(), "eos_token_id", None)
            self.summary_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
        name = type(self).__name__
        if not 0 < self.min_temperature <= self.init_temperature <= self.max_temperature:
            raise ValueError(
                f"{name} needs 0 < min_temperature <= init_temperature <= max_temperature, got "
                f"{self.min_temperature}, {self.init_temperature}, {self.max_temperature}"
            )
        if self.embed_dim < 0:
            raise ValueError(f"{name}.embed_dim must be >= 0 (0 = no projection heads), got {self.embed_dim}")


class FinedeficsConfig(FinedeficsAlignmentConfig, Idefics2Config):
    r"""
    Configuration of a [`FinedeficsForConditionalGeneration`]: an Idefics2 model (SigLIP vision encoder,
    perceiver resampler, Mistral decoder) with the settings of attribute-augmented alignment
    (see [`FinedeficsAlignmentConfig`] for them).
    """

    model_type = "finedefics"


__all__ = ["FinedeficsAlignmentConfig", "FinedeficsConfig"]
