"""Finedefics processor: the Idefics2 processor (image processor + tokenizer + chat template) plus
plain-text tokenisation for the global embeddings, image loading with clear errors, and input checks.

This file ships inside every Finedefics checkpoint (``trust_remote_code``); it imports nothing from
the rest of the Finedefics repository.
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError
from transformers import BatchEncoding, Idefics2Processor

MIN_IMAGE_SIDE = 2


class FinedeficsProcessor(Idefics2Processor):
    """Idefics2's processor, unchanged for prompts and images, with ``tokenize_texts`` for embeddings.

    ``processor(images=..., text=...)`` and ``processor.apply_chat_template(...)`` behave as in
    Idefics2. Images may be PIL images of any mode (converted to RGB) or file paths.
    """

    def __call__(self, images=None, text=None, **kwargs):
        if images is not None:
            images = self._prepare_images(images)
        return super().__call__(images=images, text=text, **kwargs)

    # ------------------------------------------------------------------ texts
    @property
    def summary_token(self) -> str:
        return self.tokenizer.eos_token

    def tokenize_texts(
        self,
        texts: list[str] | str,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        padding_side: str = "right",
    ) -> BatchEncoding:
        """Tokenise plain texts (attribute descriptions, category names) for ``get_text_embeddings``.

        Each text becomes ``<bos> text <summary>``, where the summary token is the tokenizer's EOS.
        Rows are padded (right by default; the model pools correctly under either side).

        Raises:
            ValueError: on an empty list, an empty or non-string text, or a text longer than
                ``max_length`` (default: the tokenizer's ``model_max_length``).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("tokenize_texts needs at least one text, got an empty list")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {index} is empty or not a string: {text!r}")
        tokenizer = self.tokenizer
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        rows = [bos + ids + [tokenizer.eos_token_id] for ids in encoded]
        limit = max_length or tokenizer.model_max_length
        for index, row in enumerate(rows):
            if len(row) > limit:
                raise ValueError(
                    f"text {index} is {len(row)} tokens long with its summary token, more than the maximum of "
                    f"{limit}: {texts[index][:60]!r}..."
                )
        return tokenizer.pad(
            {"input_ids": rows}, padding=True, return_tensors=return_tensors, padding_side=padding_side
        )

    # ----------------------------------------------------------------- images
    def _prepare_images(self, images):
        """Open paths, convert every mode (L, RGBA, P, CMYK, ...) to RGB, reject degenerate images."""
        if isinstance(images, (list, tuple)):
            return [self._prepare_images(image) for image in images]
        return self.load_image(images)

    @staticmethod
    def load_image(image) -> Image.Image:
        """A PIL RGB image from a PIL image or a file path, with an error that names the file."""
        source = "image"
        if isinstance(image, (str, os.PathLike)) and not str(image).startswith(("http://", "https://")):
            source = os.fspath(image)
            if not os.path.isfile(source):
                raise ValueError(f"image file not found: {source}")
            try:
                with Image.open(source) as opened:
                    opened.load()
                    image = opened.copy()
            except (UnidentifiedImageError, OSError, SyntaxError) as error:
                raise ValueError(f"cannot read image file {source}: corrupt or truncated ({error})") from error
        if not isinstance(image, Image.Image):
            return image  # URLs and arrays go to Idefics2's own loading
        if min(image.size) < MIN_IMAGE_SIDE:
            raise ValueError(
                f"{source} is {image.size[0]}x{image.size[1]} pixels; images need at least "
                f"{MIN_IMAGE_SIDE} pixels per side"
            )
        if image.mode != "RGB":
            image = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
        return image


__all__ = ["FinedeficsProcessor"]
