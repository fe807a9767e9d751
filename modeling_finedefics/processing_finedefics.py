"""Finedefics processor: the Idefics2 processor (image processor + tokenizer + chat template) plus
plain-text tokenisation for the global embeddings, image loading with clear errors, and input checks.

This file ships inside every Finedefics checkpoint (``trust_remote_code``); it imports nothing from
the rest of the Finedefics repository.
"""

from __future__ import annotations

import os
import struct

from PIL import Image, UnidentifiedImageError
from transformers import BatchEncoding, Idefics2Processor


class FinedeficsProcessorMixin:
    """What every Finedefics processor adds to its family's stock processor (written once for all families).

    ``tokenize_texts`` (texts ending in the summary token, for ``get_text_embeddings``), ``load_image``
    (paths and every PIL mode, checked, through ``read_image`` / ``checked_rgb``), and
    ``image_embedding_inputs`` (what the family's ``get_image_embeddings`` takes). Prompts go through the
    stock processor and its own chat template, unchanged.
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
        if isinstance(image, (str, os.PathLike)) and not str(image).startswith(("http://", "https://")):
            source = os.fspath(image)
            if not os.path.isfile(source):
                raise ValueError(f"image file not found: {source}")
            return read_image(source, source)
        if not isinstance(image, Image.Image):
            return image  # URLs and arrays go to the stock processor's own loading
        return checked_rgb(image, "image")

    # The text of an image-summary row before the processor expands it: the family's placeholder for one image
    # as its chat template writes it. ``nested_images``: the processor wants one list of images per text.
    image_summary_prompt = "<image>"
    nested_images = False

    def image_embedding_inputs(self, images, return_tensors: str = "pt"):
        """The batch ``model.get_image_embeddings(**batch)`` takes for these images (one image per row).

        Each row is the family's image placeholder, expanded by this processor exactly as in a prompt, followed
        by the summary token, with no BOS; rows are right-padded, with the family's pixel inputs beside them.
        """
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("image_embedding_inputs needs at least one image")
        images = [self.load_image(image) for image in images]
        texts = [self.image_summary_prompt + self.summary_token] * len(images)
        return self(images=self.images_per_text(images), text=texts,
                    add_special_tokens=False, padding=True, padding_side="right", return_tensors=return_tensors)

    # Training and evaluation both encode chat prompts through these two, so they ask byte for byte the same.
    def images_per_text(self, images: list):
        """A batch's images (one image or None per text) in the layout this processor takes: one list per text
        (``nested_images``: Idefics2, Idefics3, SmolVLM) or a flat list matched to the placeholders in order
        (Qwen, LLaVA); None when no text has an image (the image processor cannot take zero images)."""
        if self.nested_images:
            nested = [[image] if image is not None else [] for image in images]
            return nested if any(nested) else None
        flat = [image for image in images if image is not None]
        return flat or None

    def chat_text_kwargs(self, texts: list[str]) -> dict:
        """``add_special_tokens=False`` when the chat template already wrote the BOS token (Idefics3's and
        SmolVLM's templates start with it), else nothing: the rule of the processor's own
        ``apply_chat_template(tokenize=True)`` (and so of the pipeline), so no prompt starts with two BOS."""
        bos = self.tokenizer.bos_token
        if bos is not None and texts and all(text.startswith(bos) for text in texts):
            return {"add_special_tokens": False}
        return {}


class FinedeficsProcessor(FinedeficsProcessorMixin, Idefics2Processor):
    """Idefics2's processor, unchanged for prompts and images, with ``tokenize_texts`` for embeddings.

    ``processor(images=..., text=...)`` and ``processor.apply_chat_template(...)`` behave as in
    Idefics2. Images may be PIL images of any mode (converted to RGB) or file paths.
    """

    nested_images = True

    def image_embedding_inputs(self, images, return_tensors: str = "pt"):
        """``pixel_values`` and ``pixel_attention_mask`` of one image per row (Idefics2 embeds image features
        directly, no prompt)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        images = [self.load_image(image) for image in images]
        return self.image_processor([[image] for image in images], return_tensors=return_tensors)


# --------------------------------------------------------------------- image files
# Shared by training, evaluation and ``classify`` so that every entry point accepts and refuses the same images.
MIN_IMAGE_SIDE = 2
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(file, source: str) -> Image.Image:
    """Decode an image file (a path or a binary file object) into a checked RGB image.

    Raises:
        ValueError: naming ``source`` when the file is not an image, is truncated, is too small, or
            has more pixels than PIL agrees to decode (``PIL.Image.MAX_IMAGE_PIXELS``; PIL raises
            ``DecompressionBombError``, which is not an ``OSError``).
    """
    try:
        with Image.open(file) as opened:
            opened.load()
            image = opened.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(f"{source} has too many pixels to decode safely ({error}); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from error
    except (UnidentifiedImageError, OSError, SyntaxError, struct.error) as error:
        raise ValueError(f"cannot read image file {source}: corrupt or truncated ({error})") from error
    return checked_rgb(image, source)


def check_image_size(size: tuple[int, int], source: str) -> None:
    """Refuse an image smaller than ``MIN_IMAGE_SIDE`` pixels per side (the image processor cannot resize it)."""
    if min(size) < MIN_IMAGE_SIDE:
        raise ValueError(f"{source} is {size[0]}x{size[1]} pixels; images need at least {MIN_IMAGE_SIDE} pixels "
                         "per side")


def checked_rgb(image: Image.Image, source: str) -> Image.Image:
    """``image`` in RGB after the size check; 16- and 32-bit greyscale are scaled, not clipped, to 8 bits."""
    check_image_size(image.size, source)
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _wide_greyscale_to_rgb(image)
    if image.mode == "P":
        return image.convert("RGBA").convert("RGB")  # a transparent palette entry must not pick a random colour
    return image.convert("RGB")


def _wide_greyscale_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (PNG ``I;16``) or 32-bit greyscale to 8 bits; PIL's own ``convert`` clips every value above 255.

    ``I;16`` values span 0-65535. ``I`` and ``F`` images carry no range: values up to 255 are taken as
    8-bit, larger ones as 16-bit (what a 16-bit PNG holds after ``convert("I")``).
    """
    import numpy as np

    values = np.asarray(image.convert("F") if image.mode != "F" else image, dtype=np.float64)
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES or values.max(initial=0) > 255
    scaled = values / 257.0 if sixteen_bit else values
    grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8, two dimensions: mode L


__all__ = [
    "FinedeficsProcessor", "FinedeficsProcessorMixin", "MIN_IMAGE_SIDE", "check_image_size", "checked_rgb",
    "read_image",
]
