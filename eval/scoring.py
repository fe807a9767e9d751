"""Three ways to read a multiple-choice answer out of a Finedefics model, plus open-set naming.

- ``generate``: FOCI's protocol. The chat-formatted prompt (image + FOCI text), greedy decoding with
  ``max_new_tokens`` (FOCI: 10), the letter read by FOCI's rule; an unreadable answer is a
  generation failure and counts as wrong.
- ``likelihood``: no decoding. The summed log-probability of each option's answer given the image
  and prompt; the most likely option wins. The image and prompt are encoded ONCE per example (one
  prefill with a KV cache), the cache is repeated for the options, and all continuations of a batch
  are scored in one more forward pass:

      score(option) = sum_t log p(answer_t | image, prompt, answer_<t)

  The answer is what the chat template writes after "Assistant:" (the turn stage II trains):
  ``"letter"`` (default) scores the letter token alone (" B"), the very token FOCI's rule reads, so
  the prefill's last logits already hold all four scores; ``"letter_name"`` (" B. Laysan
  Albatross<end_of_utterance>") and ``"name"`` score the whole turn up to its end token, which
  takes the cached second pass. Sums favour short answers; with ``"letter"`` all have one token.
- ``embedding``: zero-shot, no decoding. Cosine similarity between ``get_image_embeddings`` and the
  category-name embeddings (computed once per benchmark): the best of the 4 options, and top-1 /
  top-5 over all categories.
- ``open_set``: the model is asked to name the object; the answer is right when it equals the label
  after normalisation (case, underscores, punctuation, a leading article).

Every scorer takes a batch of PIL images and :class:`PreparedExample` items and returns one
FOCI-format prediction record per item (see ``foci.prediction_record``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import MULTIPLE_CHOICE_ANSWERS
from .foci import CHOICE_LETTERS, OptionExample, foci_prompt, names_match, parse_letter, prediction_record, shuffled_options

MODES = ("generate", "likelihood", "embedding", "open_set")
MC_MODES = ("generate", "likelihood", "embedding")
FOCI_MAX_NEW_TOKENS = 10
OPEN_SET_MAX_NEW_TOKENS = 24
# answer format -> (assistant text, whether the end-of-turn token is part of the scored answer)
ANSWER_FORMATS = {style: (template, style != "letter") for style, template in MULTIPLE_CHOICE_ANSWERS.items()}


@dataclass
class PreparedExample:
    """An example as a model sees it: options in their seeded order and the prompt text."""

    example: OptionExample
    shown_options: list[str]
    prompt: str

    @property
    def answer_letter(self) -> str:
        return CHOICE_LETTERS[self.shown_options.index(self.example.groundtruth)]


def prepare_examples(examples: list[OptionExample], query: str, seed: int,
                     prompt_template: str = "{}") -> list[PreparedExample]:
    """Seeded option order and FOCI prompt for every example (the same for all scoring modes).

    ``prompt_template`` wraps the FOCI text; FOCI's own runner passed Idefics2 checkpoints
    ``"User: {}"`` (its generic template), which ``"User: {}"`` here reproduces.
    """
    if "{}" not in prompt_template:
        raise ValueError(f"prompt template must contain '{{}}' where the FOCI prompt goes, got {prompt_template!r}")
    prepared = []
    for example in examples:
        shown = shuffled_options(example.options, seed, example.example_id)
        prepared.append(PreparedExample(example, shown, prompt_template.replace("{}", foci_prompt(query, shown))))
    return prepared


# ----------------------------------------------------------------------------- shared helpers
def chat_prompts(processor, texts: list[str], with_image: bool = True) -> list[str]:
    """The chat-formatted prompts: one user turn holding the image (if any) and the text, then "Assistant:"."""
    image_part = [{"type": "image"}] if with_image else []
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": image_part + [{"type": "text", "text": text}]}],
            add_generation_prompt=True,
        )
        for text in texts
    ]


def encode_prompts(model, processor, images: list | None, texts: list[str]):
    """Processor inputs for image + text prompts (text only when ``images`` is None), left-padded (so every
    prompt ends at the last column)."""
    inputs = processor(images=[[image] for image in images] if images is not None else None,
                       text=chat_prompts(processor, texts, with_image=images is not None),
                       return_tensors="pt", padding=True, padding_side="left")
    inputs = inputs.to(model.device)
    if images is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as ``generate`` computes them for left-padded rows."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


@torch.no_grad()
def greedy_answers(model, processor, images: list | None, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers (new tokens only, special tokens dropped, whitespace stripped); ``images=None``: text only."""
    inputs = encode_prompts(model, processor, images, texts)
    tokenizer = processor.tokenizer
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                               pad_token_id=tokenizer.pad_token_id)
    new_tokens = generated[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


# ----------------------------------------------------------------------------- generate
class GenerateScorer:
    """FOCI's protocol: greedy generation, the letter read by FOCI's rule, failures kept as "NA ### ..."."""

    name = "generate"

    def __init__(self, model, processor, max_new_tokens: int = FOCI_MAX_NEW_TOKENS):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens

    def __call__(self, images: list, items: list[PreparedExample]) -> list[dict]:
        answers = greedy_answers(self.model, self.processor, images, [item.prompt for item in items],
                                 self.max_new_tokens)
        return [prediction_record(item.example.image, item.shown_options, item.example.groundtruth, answer,
                                  parse_letter(answer)) for item, answer in zip(items, answers)]


# ----------------------------------------------------------------------------- likelihood
class LikelihoodScorer:
    """Option log-likelihoods with one prefill per example; see the module docstring for the score."""

    name = "likelihood"

    def __init__(self, model, processor, answer: str = "letter"):
        if answer not in ANSWER_FORMATS:
            raise ValueError(f"unknown likelihood answer format {answer!r}; choose one of {sorted(ANSWER_FORMATS)}")
        self.model, self.processor = model, processor
        self.answer_template, self.with_end_of_turn = ANSWER_FORMATS[answer]
        self._continuations: dict[str, list[int]] = {}

    def __call__(self, images: list, items: list[PreparedExample]) -> list[dict]:
        scores = self.option_scores(images, items)
        records = []
        for item, row in zip(items, scores.tolist()):
            letter = CHOICE_LETTERS[max(range(len(row)), key=row.__getitem__)]
            records.append(prediction_record(item.example.image, item.shown_options, item.example.groundtruth,
                                             letter, letter))
        return records

    @torch.no_grad()
    def option_scores(self, images: list, items: list[PreparedExample]) -> torch.Tensor:
        """``(batch, options)`` summed log-probabilities of each shown option's answer."""
        model = self.model
        continuations = [[self.continuation_ids(letter, option) for letter, option in
                          zip(CHOICE_LETTERS, item.shown_options)] for item in items]
        multi_token = max(len(ids) for row in continuations for ids in row) > 1
        prefix = encode_prompts(model, self.processor, images, [item.prompt for item in items])
        # One-token answers are all read from the prefill's last logits: no cache needed.
        outputs = model(**prefix, position_ids=position_ids_from_mask(prefix["attention_mask"]),
                        use_cache=multi_token, logits_to_keep=1)
        num_options = len(continuations[0])
        first = torch.log_softmax(outputs.logits[:, -1].float(), dim=-1)
        first_ids = torch.tensor([[ids[0] for ids in row] for row in continuations], device=first.device)
        scores = first.gather(1, first_ids)
        if multi_token:
            flat = [ids for row in continuations for ids in row]
            scores = scores + self._later_token_scores(outputs.cache, prefix["attention_mask"], flat,
                                                       num_options).view(len(items), num_options)
        return scores

    def _later_token_scores(self, cache, prefix_mask: torch.Tensor, continuations: list[list[int]],
                            num_options: int) -> torch.Tensor:
        """Log-probabilities of every continuation token after the first, all options in one forward.

        The prefill cache is repeated per option, so the image and prompt are never encoded again.
        """
        device = prefix_mask.device
        length = max(len(ids) for ids in continuations) - 1
        pad = self.processor.tokenizer.pad_token_id
        inputs = torch.full((len(continuations), length), pad, dtype=torch.long, device=device)
        targets = torch.full_like(inputs, -1)
        for row, ids in enumerate(continuations):
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1], device=device)
            targets[row, : len(ids) - 1] = torch.tensor(ids[1:], device=device)
        real = (targets >= 0).long()
        cache.batch_repeat_interleave(num_options)
        prefix_mask = prefix_mask.repeat_interleave(num_options, dim=0)
        positions = prefix_mask.sum(dim=1, keepdim=True) + torch.arange(length, device=device)
        logits = self.model(input_ids=inputs, attention_mask=torch.cat([prefix_mask, real], dim=1),
                            position_ids=positions, cache=cache, use_cache=True).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.clamp(min=0).unsqueeze(-1))
        return (log_probs.squeeze(-1) * real).sum(dim=1)

    def continuation_ids(self, letter: str, option: str) -> list[int]:
        """Token ids of the assistant's answer after "Assistant:", as the chat template writes it.

        Tokenised in context (the generation prompt followed by the answer) so that a tokenizer
        that merges across the boundary is caught rather than silently mis-scored.
        """
        answer = self.answer_template.format(letter=letter, option=option)
        if answer not in self._continuations:
            self._continuations[answer] = self._tokenize_continuation(answer)
        return self._continuations[answer]

    def _tokenize_continuation(self, answer: str) -> list[int]:
        processor, tokenizer = self.processor, self.processor.tokenizer
        user = {"role": "user", "content": [{"type": "text", "text": "?"}]}
        prompt = processor.apply_chat_template([user], add_generation_prompt=True)
        full = processor.apply_chat_template([user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        if not full.startswith(prompt):
            raise ValueError("the chat template's assistant turn does not extend its generation prompt; "
                             "likelihood scoring cannot locate the answer")
        context = prompt.rsplit("\n", 1)[-1]
        if self.with_end_of_turn:  # up to the end-of-turn token; the template's trailing newline is no answer
            continuation = full[len(prompt):].rstrip("\n")
        else:
            continuation = full[len(prompt):full.index(answer, len(prompt)) + len(answer)]
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        joined_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if joined_ids[: len(context_ids)] != context_ids or len(joined_ids) == len(context_ids):
            raise ValueError(f"the tokenizer merges the answer {continuation!r} into the prompt's last token; "
                             "choose another likelihood answer format")
        return joined_ids[len(context_ids):]


# ----------------------------------------------------------------------------- embedding
class EmbeddingScorer:
    """Zero-shot choice by image-text embedding similarity; category embeddings computed once."""

    name = "embedding"

    def __init__(self, model, processor, categories: list[str], text_batch_size: int = 64):
        self.model, self.processor, self.categories = model, processor, list(categories)
        self.category_index = {name: i for i, name in enumerate(self.categories)}
        self.category_embeds = self._embed_categories(text_batch_size)

    @torch.no_grad()
    def _embed_categories(self, batch_size: int) -> torch.Tensor:
        chunks = []
        for start in range(0, len(self.categories), batch_size):
            texts = self.processor.tokenize_texts(self.categories[start:start + batch_size]).to(self.model.device)
            chunks.append(self.model.get_text_embeddings(texts["input_ids"], texts["attention_mask"]).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def similarities(self, images: list) -> torch.Tensor:
        """``(batch, categories)`` cosine similarities of the images to every category name."""
        pixels = self.processor.image_processor([[image] for image in images], return_tensors="pt")
        pixel_mask = pixels.get("pixel_attention_mask")
        image_embeds = self.model.get_image_embeddings(
            pixels["pixel_values"].to(self.model.device, self.model.dtype),
            None if pixel_mask is None else pixel_mask.to(self.model.device),
        )
        return image_embeds.float() @ self.category_embeds.T

    def __call__(self, images: list, items: list[PreparedExample]) -> list[dict]:
        similarities = self.similarities(images)
        top_k = similarities.topk(min(5, len(self.categories)), dim=-1).indices.tolist()
        records = []
        for item, row, ranked in zip(items, similarities, top_k):
            option_ids = torch.tensor([self.category_index[o] for o in item.shown_options], device=row.device)
            letter = CHOICE_LETTERS[int(row[option_ids].argmax())]
            record = prediction_record(item.example.image, item.shown_options, item.example.groundtruth,
                                       letter, letter)
            # Not part of FOCI's format; extra keys are ignored by FOCI-format readers.
            record["top5_all"] = [self.categories[i] for i in ranked]
            records.append(record)
        return records


# ----------------------------------------------------------------------------- open set
class OpenSetScorer:
    """The model names the object; right when the normalised answer equals the normalised label."""

    name = "open_set"

    def __init__(self, model, processor, question: str, categories: list[str],
                 max_new_tokens: int = OPEN_SET_MAX_NEW_TOKENS):
        self.model, self.processor, self.question, self.max_new_tokens = model, processor, question, max_new_tokens
        self.categories = list(categories)

    def __call__(self, images: list, items: list[PreparedExample]) -> list[dict]:
        answers = greedy_answers(self.model, self.processor, images, [self.question] * len(items), self.max_new_tokens)
        records = []
        for item, answer in zip(items, answers):
            # The answer is mapped to the category it names (if any), so per-class accuracy and
            # confusions read the same as in the multiple-choice modes.
            named = next((c for c in self.categories if names_match(answer, c)), None)
            records.append({"image": item.example.image, "predicted": named if named is not None else answer,
                            "predicted_raw": answer, "correct": item.example.groundtruth,
                            "options": list(item.shown_options)})
        return records


def check_modes(modes) -> tuple[str, ...]:
    """The requested modes, deduplicated in order; an empty or unknown one is a clear error."""
    modes = tuple(dict.fromkeys([modes] if isinstance(modes, str) else modes or ()))
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown scoring mode(s) {unknown or list(modes)}; choose from {', '.join(MODES)}")
    return modes


def build_scorers(model, processor, benchmark, modes, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                  likelihood_answer: str = "letter") -> dict:
    """One scorer per requested mode (the embedding scorer embeds the benchmark's categories now)."""
    modes = check_modes(modes)
    factories = {
        "generate": lambda: GenerateScorer(model, processor, max_new_tokens),
        "likelihood": lambda: LikelihoodScorer(model, processor, likelihood_answer),
        "embedding": lambda: EmbeddingScorer(model, processor, benchmark.categories),
        "open_set": lambda: OpenSetScorer(model, processor, benchmark.open_set_question, benchmark.categories),
    }
    return {mode: factories[mode]() for mode in modes}


__all__ = [
    "ANSWER_FORMATS", "EmbeddingScorer", "GenerateScorer", "LikelihoodScorer", "MC_MODES", "MODES", "OpenSetScorer",
    "PreparedExample", "build_scorers", "chat_prompts", "check_modes", "encode_prompts", "prepare_examples",
]
