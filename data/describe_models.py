"""The models behind ``finedefics data describe``, loaded through the transformers Auto classes.

- :func:`load_vqa_model`: any ``image-text-to-text`` model with a chat template (this package's checkpoints
  included: importing ``modeling_finedefics`` registers their classes) as a :class:`VQAModel`, which answers
  a batch of ``(image, question)`` pairs in one left-padded greedy ``generate`` call;
- :func:`load_text_model`: a causal LM as a :class:`TextModel`, for the attribute list and the summaries.

Each model carries a ``revision``: the Hub commit its files came from, or a fingerprint of a local folder's
files, so that cached answers of a retrained model are never taken for the new model's.

Code in a model folder runs only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VQA_MAX_NEW_TOKENS = 16  # an attribute value is a few words
SMALL_FILE = 1 << 20  # folder files up to this size are fingerprinted by content, larger ones by size and time


# ----------------------------------------------------------------------------- revisions
def folder_fingerprint(folder: Path) -> str:
    """A short hash of a model folder's files: content of the small ones, size and modification time of the
    large ones (hashing gigabytes of weights would cost more than the answers it protects)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(str(path.relative_to(folder)).encode("utf-8"))
        large = f"{stat.st_size}:{stat.st_mtime_ns}".encode()
        digest.update(path.read_bytes() if stat.st_size <= SMALL_FILE else large)
    return digest.hexdigest()[:16]


def model_revision(name_or_path: str, revision: str | None = None) -> str:
    """What identifies the weights: ``local-<fingerprint>`` for a folder, else the Hub commit (or ``revision``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return "local-" + folder_fingerprint(path)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return revision or "main"


# ----------------------------------------------------------------------------- loading checks
def _load_config(name: str, option: str, revision: str | None, trust_remote_code: bool):
    """The model's config, with errors that name the option and the model."""
    from transformers import AutoConfig

    import modeling_finedefics  # noqa: F401  (registers this package's classes with the Auto classes)

    path = Path(name).expanduser()
    if path.is_file():
        raise ValueError(f"{option} {name} is a file; give a model folder or a Hub id")
    if not path.exists() and name.startswith(("/", "./", "../", "~")):  # a path, never a Hub id
        raise FileNotFoundError(f"{option} {name}: no model there (no such folder)")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise FileNotFoundError(f"{option} {name}: no model there ({_first_line(error)})") from None
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(f"{option} {name} needs code from its own folder to load; pass --trust-remote-code "
                             "if you trust it") from None
        raise ValueError(f"{option} {name}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_task(config, auto_class, option: str, name: str, task: str, what: str) -> None:
    """Refuse a model whose architecture ``auto_class`` cannot load (a text LM as VQA model, a classifier, ...)."""
    registered = type(config) in auto_class._model_mapping
    remote = auto_class.__name__ in (getattr(config, "auto_map", None) or {})
    if not (registered or remote):
        raise ValueError(f"{option} {name} is a {config.model_type!r} model, which is no {task} model, so it cannot "
                         f"{what}")


def _pick_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _dtype_for(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _pad_left(tokenizer) -> None:
    """Batched generation appends new tokens on the right, so the padding goes on the left."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # common for base LMs; the padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token


@dataclass
class LoadedModel:
    name: str  # as the user gave it
    revision: str
    model: object
    tokenizer: object

    @property
    def device(self):
        return self.model.device

    def decode_new_tokens(self, output, prompt_length: int) -> list[str]:
        """The generated continuations (left padding puts every prompt's end at ``prompt_length``)."""
        return [text.strip() for text in self.tokenizer.batch_decode(output[:, prompt_length:],
                                                                      skip_special_tokens=True)]

    def generate(self, inputs, max_new_tokens: int) -> list[str]:
        """Greedy generation for a padded batch: the same answer as asked alone."""
        import torch

        inputs = {key: value.to(self.device, dtype=self.model.dtype) if value.is_floating_point()
                  else value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        return self.decode_new_tokens(output, inputs["input_ids"].shape[1])


# ----------------------------------------------------------------------------- VQA
class VQAModel(LoadedModel):
    """An image-text-to-text model that answers questions about images, a batch at a time."""

    def __init__(self, name: str, revision: str, model, processor):
        super().__init__(name, revision, model, processor.tokenizer)
        self.processor = processor

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt for one image and one question, ready for the answer."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def answer(self, images: list, questions: list[str], max_new_tokens: int = VQA_MAX_NEW_TOKENS) -> list[str]:
        """The answer to ``questions[i]`` about ``images[i]``, for every ``i``, in one batch."""
        inputs = self.processor(text=[self.prompt(q) for q in questions], images=[[image] for image in images],
                                padding=True, return_tensors="pt")
        return self.generate(inputs, max_new_tokens)


def check_vqa_model(name: str, revision: str | None = None, trust_remote_code: bool = False,
                    option: str = "--vqa-model"):
    """The processor of an image-text-to-text model with a chat template; anything else is a clear error.
    Cheap (no weights are read), so a run can check its models before it starts."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = _load_config(name, option, revision, trust_remote_code)
    _check_task(config, AutoModelForImageTextToText, option, name, "image-text-to-text",
                "answer questions about images")
    processor = AutoProcessor.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ValueError(f"{option} {name} has no processor for images and text ({type(processor).__name__})")
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise ValueError(f"{option} {name} has no chat template, so where its image and question go in the prompt "
                         "is unknown; use an instruction-tuned (chat) model, or add a chat template to its folder")
    return processor


def load_vqa_model(name: str, revision: str | None = None, trust_remote_code: bool = False,
                   device: str = "auto", option: str = "--vqa-model") -> VQAModel:
    """An image-text-to-text model and its processor, checked to be able to answer questions about images."""
    from transformers import AutoModelForImageTextToText

    processor = check_vqa_model(name, revision, trust_remote_code, option)
    _pad_left(processor.tokenizer)
    device = _pick_device(device)
    model = AutoModelForImageTextToText.from_pretrained(name, revision=revision, dtype=_dtype_for(device),
                                                        trust_remote_code=trust_remote_code)
    return VQAModel(name, model_revision(name, revision), model.to(device).eval(), processor)


# ----------------------------------------------------------------------------- text
class TextModel(LoadedModel):
    """A causal LM that completes a batch of prompts (chat-formatted when the model has a chat template)."""

    def prompt(self, text: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      add_generation_prompt=True, tokenize=False)
        return text  # a base LM: the prompts are written to be completed as they are

    def complete(self, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
        inputs = self.tokenizer([self.prompt(p) for p in prompts], padding=True, return_tensors="pt")
        inputs = {key: value for key, value in inputs.items() if key != "token_type_ids"}  # causal LMs take none
        return self.generate(inputs, max_new_tokens)


def check_text_model(name: str, option: str, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a causal LM; another kind of model is a clear error naming ``option``. Reads no weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _load_config(name, option, revision, trust_remote_code)
    _check_task(config, AutoModelForCausalLM, option, name, "text-generation", "write text")
    return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)


def load_text_model(name: str, option: str, revision: str | None = None, trust_remote_code: bool = False,
                    device: str = "auto") -> TextModel:
    """A causal LM and its tokenizer, checked to be able to generate text."""
    from transformers import AutoModelForCausalLM

    tokenizer = check_text_model(name, option, revision, trust_remote_code)
    _pad_left(tokenizer)
    device = _pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=_dtype_for(device),
                                                 trust_remote_code=trust_remote_code)
    return TextModel(name, model_revision(name, revision), model.to(device).eval(), tokenizer)
