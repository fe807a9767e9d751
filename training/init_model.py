"""A starting model for your own data on a CPU: a tiny Finedefics model with a tokenizer trained on the data.

    finedefics init-model --preset micro --corpus runs/pretrain-data --corpus runs/finetune-data runs/init
    finedefics init-model --family qwen2_5_vl --corpus runs/finetune-data runs/init-qwen

The tokenizer (byte-level BPE, trained offline) learns the words of the data: category names and their
negatives, attribute descriptions, questions and answers, and the questions training and evaluation
ask about the data's objects (``finedefics_data.prompts``, with the data's noun). The model is built by
``modeling_finedefics.tiny`` (``micro`` ~1M or ``tiny`` ~4M parameters, the architecture of
Idefics2-8B) with random weights and records the noun in its config. ``family`` picks another model family
(``modeling_finedefics.families.FAMILIES``: idefics3, smolvlm, qwen2_vl, qwen2_5_vl, llava), built by
``FAMILIES[family].build_tiny`` (~1M parameters, that family's tokenizer special tokens, chat template and
image processor); its size, image size and vocabulary size are fixed by that builder. It knows nothing yet: it makes
the whole pipeline (two-stage -> eval -> push) runnable on a CPU for any dataset, not a good model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from finedefics_data.prompts import (
    DEFAULT_NOUN,
    LETTERS,
    ObjectNoun,
    describe_instruction,
    multiple_choice_prompt,
    multiple_choice_query,
    open_set_question,
)

from .checkpoints import check_output_dir

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("category", "attribute", "question", "answer", "neg_categories", "neg_attributes")


def init_model(data_dirs: list[str | Path], output_dir: str | Path, preset: str | None = None,
               noun: ObjectNoun | None = None,
               image_size: int | None = None, vocab_size: int | None = None, seed: int = 0,
               image_seq_len: int | None = None, corpus: list[str] | None = None, family: str = "idefics2") -> Path:
    """Build and save a tiny model and processor whose tokenizer is trained on ``data_dirs``' texts.

    ``noun`` defaults to the first noun the data folders declare (``finedefics data csv --noun``).
    ``corpus`` replaces the texts read from the data (the synthetic benchmark has its own:
    ``data.synth.text_corpus``). ``family`` is a key of ``modeling_finedefics.families.FAMILIES``; Idefics2
    (the default) takes ``preset`` (default tiny), ``image_size`` (64), ``vocab_size`` (2048) and
    ``image_seq_len`` (8); the other families have one tiny size and refuse those. Returns the output folder
    (a checkpoint ``finedefics train`` / ``two-stage`` start from).
    """
    from modeling_finedefics.families import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    output_dir = Path(output_dir)
    check_output_dir(output_dir)  # a file there (or above it) is named before minutes of tokenizer training
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} exists and is not empty; choose a new folder")
    noun = noun or _data_noun(data_dirs)
    texts, names = data_texts(data_dirs)
    corpus = (corpus or texts) + question_texts(noun or DEFAULT_NOUN, names)
    model, processor, preset = FAMILIES[family].build_tiny_for_data(
        corpus, seed=seed, preset=preset, image_size=image_size, vocab_size=vocab_size, image_seq_len=image_seq_len)
    if noun is not None:
        for field_name, value in noun.config_fields().items():
            setattr(model.config, field_name, value)
    else:
        logger.warning("no object noun (give --noun, or `finedefics data csv --noun`): questions will say %r",
                       DEFAULT_NOUN.singular)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    logger.info("%s %s model (%.2fM parameters, %d-token vocabulary from %d texts) written to %s", family, preset,
                sum(p.numel() for p in model.parameters()) / 1e6, len(processor.tokenizer), len(corpus), output_dir)
    return output_dir


def data_texts(data_dirs: list[str | Path]) -> tuple[list[str], list[str]]:
    """Every distinct text of the data folders' rows (all splits: names, descriptions, questions,
    answers), and the category names among them (sorted)."""
    texts: dict[str, None] = {}
    names: set[str] = set()
    for folder in data_dirs:
        for split in _splits(Path(folder)):
            for column in (c for c in TEXT_COLUMNS if c in split.column_names):
                values = [t for v in split[column] for t in (v if isinstance(v, list) else [v])
                          if isinstance(t, str) and t.strip()]
                texts.update(dict.fromkeys(values))
                if column == "category":
                    names.update(values)
    if not texts:
        raise ValueError(f"no text found in {', '.join(map(str, data_dirs))} (columns {', '.join(TEXT_COLUMNS)})")
    return list(texts), sorted(names)


def question_texts(noun: ObjectNoun, names: list[str]) -> list[str]:
    """The questions and answer forms training and evaluation use, for this noun and these names."""
    options = names[:4] or ["A", "B"]
    return [describe_instruction(noun), open_set_question(noun),
            multiple_choice_prompt(multiple_choice_query(noun), options), *LETTERS[:4], "Answer: A"]


def _splits(folder: Path):
    import datasets

    from .recipe import _load_dataset_dir

    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        return list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    return [_load_dataset_dir(folder, "train")]


def _data_noun(data_dirs) -> ObjectNoun | None:
    from finedefics_data.schema import data_noun

    return next((noun for noun in map(data_noun, data_dirs) if noun is not None), None)


__all__ = ["data_texts", "init_model", "question_texts"]
