"""Three ways to read a multiple-choice answer out of a Finedefics model, plus open-set naming.

- ``generate``: FOCI's protocol. The chat-formatted prompt (image + FOCI text), greedy decoding with
  ``max_new_tokens`` (FOCI: 10), the letter read by FOCI's rule; an unreadable answer is a
  generation failure and counts as wrong.
- ``likelihood``: no decoding. The summed log-probability of each option's answer given the image
  and prompt; the most likely option wins. The image and prompt are encoded ONCE per example (one
  prefill with a KV cache), the cache is repeated for the options, and all continuations of a batch
  are scored in one more forward pass:

      score(option) = sum_t log p(answer_t | image, prompt, answer_<t)

  The answer is what the processor's chat template writes after its generation prompt ("Assistant:",
  "<|im_start|>assistant\\n", "ASSISTANT:" depending on the family; the turn stage II trains):
  ``"letter"`` (default) scores the letter token alone (" B"), the very token FOCI's rule reads, so
  the prefill's last logits already hold all four scores; ``"letter_name"`` (" B. Laysan
  Albatross<end_of_utterance>") and ``"name"`` score the whole turn up to its end token (where the
  template writes one: LLaVA-1.5's closes a turn with a space, so there the answer text alone), which
  takes the cached second pass. Sums favour short answers; with ``"letter"`` all have one token.
- ``embedding``: zero-shot, no decoding. Cosine similarity between ``get_image_embeddings`` and the
  category-name embeddings (computed once per benchmark): the best of the 4 options, and top-1 /
  top-5 over all categories.
- ``open_set``: the model is asked to name the object; the answer is right when it equals the label
  after normalisation (case, underscores, punctuation, a leading article).

Every family of ``modeling_finedefics.families`` is scored the same way: images go to the processor in
the family's layout (nested for Idefics2/Idefics3/SmolVLM, flat for Qwen/LLaVA), prompts through its own
chat template, embeddings through ``processor.image_embedding_inputs`` (Idefics2: shared vision features).

Every scorer is a :class:`Scorer`, registered by name in ``scorers.py``: ``prepare`` builds it for a benchmark
(the embedding mode embeds every category name there), ``score`` takes a batch of PIL images and
:class:`PreparedExample` items and returns one FOCI-format prediction record per item (see
``foci.prediction_record``), and ``failures`` / ``report_metrics`` say how its predictions are read. Given a
:class:`SharedBatch` (``shared=``), scorers of the same batch encode its images once (Idefics2; the other
families once per prompt set and once for the embeddings) and the letter likelihood reads ``generate``'s prefill
instead of running its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from finedefics_data.prompts import MULTIPLE_CHOICE_ANSWERS

from .foci import (
    CHOICE_LETTERS,
    OptionExample,
    foci_prompt,
    names_match,
    parse_letter,
    prediction_record,
    shuffled_options,
)
from .scorers import scorer_class, scoring_modes

MODES = scoring_modes()  # the modes registered in scorers.py
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


def model_family(model):
    """The Finedefics family (``modeling_finedefics.families.Family``) of ``model``: what scoring asks of it
    (``mrope``, ``shares_image_features``)."""
    from modeling_finedefics.families import family_of

    return family_of(model)


def _to_model(inputs, model):
    """Processor output on the model's device, floating pixels in the model's dtype (Qwen's grids stay integers)."""
    inputs = inputs.to(model.device)
    if inputs.get("pixel_values") is not None and torch.is_floating_point(inputs["pixel_values"]):
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def mrope_deltas(model, inputs) -> torch.Tensor | None:
    """``(batch, 1)`` offsets of Qwen's text positions after its images (the image grid's largest position + 1
    minus the real tokens so far), as ``get_rope_index`` computes them for ``generate``; None for 1-D rotary
    families and text-only prompts. A continuation token ``t`` after a prompt of ``n`` real tokens is then at
    position ``n + t + delta`` on all three axes."""
    if not model_family(model).mrope or inputs.get("image_grid_thw") is None:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's own
    _, deltas = base.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                          image_grid_thw=inputs["image_grid_thw"],
                                          attention_mask=inputs["attention_mask"])
    return deltas


def encode_prompts(model, processor, images: list | None, texts: list[str]):
    """Processor inputs for image + text prompts (text only when ``images`` is None), left-padded (so every
    prompt ends at the last column); the images in the layout of the model's family."""
    prompts = chat_prompts(processor, texts, with_image=images is not None)
    images = processor.images_per_text(images) if images is not None else None
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left",
                       **processor.chat_text_kwargs(prompts))
    return _to_model(inputs, model)


def prefill_positions(model, attention_mask: torch.Tensor) -> dict:
    """The ``position_ids`` argument of a prefill as ``generate`` computes them: counted over real tokens for
    1-D rotary families; none for mrope families (Qwen), whose model derives its 3-D positions from the
    image grids and ``mm_token_type_ids``, as its ``generate`` does."""
    if model_family(model).mrope:  # 3-D rotary positions: the model computes its own from image_grid_thw
        return {}
    return {"position_ids": position_ids_from_mask(attention_mask)}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as ``generate`` computes them for left-padded rows."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def greedy_answers(model, processor, images: list | None, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers (new tokens only, special tokens dropped, whitespace stripped); ``images=None``: text only."""
    return SharedBatch(model, processor, images).greedy_answers(texts, max_new_tokens)


# ----------------------------------------------------------------------------- shared per-batch work
class _PrefillClock:
    """Notes when ``generate`` first hands over logits, i.e. when its prefill is done; changes no score."""

    def __init__(self):
        self.prefill_done: float | None = None

    def __call__(self, input_ids, scores):
        if self.prefill_done is None:
            _synchronize(scores.device)
            self.prefill_done = time.perf_counter()
        return scores


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timed piece is charged its own kernels and not the next one's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SharedBatch:
    """The work on one batch of images that several scoring modes need, done once on first use.

    A scorer called on its own makes a private one, so one mode alone runs exactly what several modes
    together run, minus the repeats. Shared, in order of cost on a real model:

    - ``image_features``: the vision tower + connector (``mm_encoder_outputs`` of ``forward`` and
      ``generate``; ``image_features=`` of ``get_image_embeddings``). Idefics2 only: its prompts hold a
      fixed number of image tokens, so they are tokenised without the images and the features of the batch
      serve every prompt and the image embeddings alike. The other families (Idefics3, SmolVLM, Qwen2-VL,
      Qwen2.5-VL, LLaVA) expand their image placeholders from the images themselves (Idefics3's splitting,
      Qwen's grids and mrope), and their image embeddings run the images through the base model in the
      family's own token sequence: each prompt set and the image embeddings run the vision tower themselves;
    - ``prompt_logits``: the next-token logits after a prompt. ``generate`` reads them at its prefill;
      with ``keep_prompt_logits`` they are kept, and the letter-likelihood score reads them instead of
      running the same prefill again (the prompts are the same: the FOCI text in the chat template). Every
      family;
    - ``pixels`` (the image processor; Idefics2), ``prompts`` (the tokenised chat prompts; for the other
      families the processor's whole output, pixels included) and ``embedding_inputs`` (the other families'
      ``processor.image_embedding_inputs``).

    ``seconds`` holds what each piece took and ``used`` the pieces read since the last
    :meth:`start_use`, so that every mode can be charged all the shared work it relied on.
    """

    def __init__(self, model, processor, images: list | None, keep_prompt_logits: bool = False):
        self.model, self.processor, self.images = model, processor, images
        self.keep_prompt_logits = keep_prompt_logits
        self.seconds: dict = {}
        self.used: set = set()
        self._results: dict = {}
        self._family = None

    @property
    def family(self):
        """The model's ``Family``."""
        if self._family is None:
            self._family = model_family(self.model)
        return self._family

    @property
    def shares_image_features(self) -> bool:
        """Whether the vision features are computed once and reused by every mode (Idefics2; see the class)."""
        return self.family.shares_image_features

    def start_use(self) -> None:
        self.used = set()

    def _piece(self, key, compute):
        """``compute()``'s result, computed once per batch and timed; the first call's result is kept."""
        if key not in self._results:
            start = time.perf_counter()
            self._results[key] = compute()
            _synchronize(self.model.device)
            self.seconds[key] = time.perf_counter() - start
        self.used.add(key)
        return self._results[key]

    def _require_shared_features(self, piece: str) -> None:
        if not self.shares_image_features:
            raise ValueError(f"SharedBatch.{piece} is Idefics2's (shared vision features); a {self.family.name} model "
                             "takes its pixels with the prompts (model_inputs) or from embedding_inputs")

    def pixels(self):
        """The image processor's output for the batch (one image per row), on the model's device and dtype."""
        self._require_shared_features("pixels")

        def compute():
            images = self.images
            if hasattr(self.processor, "load_image"):  # RGB, as the processor's own call makes them
                images = [self.processor.load_image(image) for image in images]
            pixels = self.processor.image_processor([[image] for image in images], return_tensors="pt")
            pixels = pixels.to(self.model.device)
            pixels["pixel_values"] = pixels["pixel_values"].to(self.model.dtype)
            return pixels
        return self._piece("pixels", compute)

    def image_features(self):
        """Vision tower + connector output (``pooler_output``: one ``(tokens, hidden)`` tensor per row)."""
        pixels = self.pixels()  # outside the timed piece: pieces never contain each other

        def compute():
            with torch.no_grad():
                return self.model.get_image_features(pixels["pixel_values"], pixels.get("pixel_attention_mask"),
                                                     return_dict=True)
        return self._piece("image_features", compute)

    def embedding_inputs(self):
        """``processor.image_embedding_inputs`` of the batch (families other than Idefics2), on the model's device."""

        def compute():
            return _to_model(self.processor.image_embedding_inputs(list(self.images)), self.model)
        return self._piece("embedding_inputs", compute)

    def prompts(self, texts: list[str]):
        """Tokenised chat prompts, left-padded; the image placeholders expanded as the processor expands them.

        Idefics2: the text alone (its expansion does not depend on the image). Other families: the processor's
        output for the images and prompts together, pixel inputs included.
        """

        def compute():
            prompts = chat_prompts(self.processor, texts, with_image=self.images is not None)
            options = self.processor.chat_text_kwargs(prompts)
            if self.images is None or self.shares_image_features:
                encoded = self.processor(text=prompts, return_tensors="pt", padding=True, padding_side="left",
                                         **options)
                return encoded.to(self.model.device)
            encoded = self.processor(images=self.processor.images_per_text(self.images), text=prompts,
                                     return_tensors="pt", padding=True, padding_side="left", **options)
            return _to_model(encoded, self.model)
        return self._piece(_texts_key("prompts", texts), compute)

    def model_inputs(self, texts: list[str]) -> dict:
        """``forward`` / ``generate`` inputs: the prompts plus the shared image features (Idefics2, never the
        pixels) or the family's pixel inputs."""
        inputs = dict(self.prompts(texts))
        if self.images is not None and self.shares_image_features:
            # A fresh dict per call: forward writes into the one it is given.
            inputs["mm_encoder_outputs"] = {"image": self.image_features()}
        return inputs

    @torch.no_grad()
    def prompt_logits(self, texts: list[str]) -> torch.Tensor:
        """``(batch, vocab)`` float32 next-token logits after each prompt: ``generate``'s prefill when it kept them.

        The prompts and image features are marked used either way: the logits were computed from them.
        """
        inputs = self.model_inputs(texts)

        def compute():
            outputs = self.model(**inputs, **prefill_positions(self.model, inputs["attention_mask"]),
                                 use_cache=False, logits_to_keep=1)
            return outputs.logits[:, -1].float()
        return self._piece(_texts_key("prompt_logits", texts), compute)

    @torch.no_grad()
    def greedy_answers(self, texts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers (new tokens only, special tokens dropped, whitespace stripped)."""
        from transformers import LogitsProcessorList

        inputs = self.model_inputs(texts)
        keep = self.keep_prompt_logits and _texts_key("prompt_logits", texts) not in self._results
        clock = _PrefillClock()
        start = time.perf_counter()
        generated = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                        pad_token_id=self.processor.tokenizer.pad_token_id,
                                        logits_processor=LogitsProcessorList([clock]),
                                        output_logits=keep, return_dict_in_generate=True)
        if keep:  # the raw logits of the first step are the prefill's: charged the prefill's time
            key = _texts_key("prompt_logits", texts)
            self._results[key] = generated.logits[0].float()
            self.seconds[key] = clock.prefill_done - start
            self.used.add(key)
        new_tokens = generated.sequences[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _texts_key(piece: str, texts: list[str]) -> tuple:
    """A piece's key for one list of prompt texts (generate and likelihood share theirs; open-set's differs)."""
    return (piece, *texts)


# ----------------------------------------------------------------------------- the interface
class Scorer:
    """One scoring mode (registered by name in ``scorers.py``).

    ``prepare`` builds it for a benchmark, once (its time is the mode's set-up time); ``score`` returns one
    FOCI-format prediction record per item of a batch, reading the batch's shared work from ``shared``;
    ``failures`` and ``report_metrics`` read its predictions for the report.
    """

    name: str
    writes_prompt_logits = False  # its prefill computes the prompts' next-token logits (generate: run it first)
    reads_prompt_logits = False  # it reads those logits when a writer ran on the batch

    @classmethod
    def prepare(cls, model, processor, benchmark, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                likelihood_answer: str = "letter") -> Scorer:
        raise NotImplementedError

    def score(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        raise NotImplementedError

    def __call__(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        return self.score(images, items, shared)

    def failures(self, records: list[dict], categories: list[str]) -> list[bool]:
        """Generation failures: a multiple-choice answer that is none of the shown options (an unparseable letter)."""
        return [record["predicted"] not in record["options"] for record in records]

    def report_metrics(self, records: list[dict], bootstrap_samples: int, seed: int, setup_seconds: float) -> dict:
        """The mode's metrics beyond the common ones (``report.mode_metrics``)."""
        return {}


# ----------------------------------------------------------------------------- generate
class GenerateScorer(Scorer):
    """FOCI's protocol: greedy generation, the letter read by FOCI's rule, failures kept as "NA ### ..."."""

    name = "generate"
    writes_prompt_logits = True

    def __init__(self, model, processor, max_new_tokens: int = FOCI_MAX_NEW_TOKENS):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens

    @classmethod
    def prepare(cls, model, processor, benchmark, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                likelihood_answer: str = "letter") -> GenerateScorer:
        return cls(model, processor, max_new_tokens)

    def score(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        shared = shared or SharedBatch(self.model, self.processor, images)
        answers = shared.greedy_answers([item.prompt for item in items], self.max_new_tokens)
        return [prediction_record(item.example.image, item.shown_options, item.example.groundtruth, answer,
                                  parse_letter(answer)) for item, answer in zip(items, answers)]


# ----------------------------------------------------------------------------- likelihood
class LikelihoodScorer(Scorer):
    """Option log-likelihoods with one prefill per example; see the module docstring for the score."""

    name = "likelihood"

    def __init__(self, model, processor, answer: str = "letter"):
        if answer not in ANSWER_FORMATS:
            raise ValueError(f"unknown likelihood answer format {answer!r}; choose one of {sorted(ANSWER_FORMATS)}")
        self.model, self.processor = model, processor
        self.answer_template, self.with_end_of_turn = ANSWER_FORMATS[answer]
        self._continuations: dict[str, list[int]] = {}
        # One-token answers are read from the prompt's next-token logits, which generate's prefill also computes.
        self.reads_prompt_logits = not self.with_end_of_turn

    @classmethod
    def prepare(cls, model, processor, benchmark, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                likelihood_answer: str = "letter") -> LikelihoodScorer:
        return cls(model, processor, likelihood_answer)

    def score(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        scores = self.option_scores(images, items, shared)
        records = []
        for item, row in zip(items, scores.tolist()):
            letter = CHOICE_LETTERS[max(range(len(row)), key=row.__getitem__)]
            records.append(prediction_record(item.example.image, item.shown_options, item.example.groundtruth,
                                             letter, letter))
        return records

    @torch.no_grad()
    def option_scores(self, images: list, items: list[PreparedExample],
                      shared: SharedBatch | None = None) -> torch.Tensor:
        """``(batch, options)`` summed log-probabilities of each shown option's answer."""
        shared = shared or SharedBatch(self.model, self.processor, images)
        continuations = [[self.continuation_ids(letter, option) for letter, option in
                          zip(CHOICE_LETTERS, item.shown_options)] for item in items]
        return self.continuation_scores([item.prompt for item in items], continuations, shared)[0]

    @torch.no_grad()
    def continuation_scores(self, texts: list[str], continuations: list[list[list[int]]],
                            shared: SharedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities of answers given as token ids (see :meth:`answer_ids`) after each prompt.

        ``continuations[row]`` holds the same number of answers for every row (one per option). Returns the
        ``(batch, answers)`` scores and, as booleans of the same shape, whether greedy decoding would write each
        answer (every token the most likely one). ``option_scores`` is this with the options' answers; the
        lmms-eval plugin calls it with the continuations lmms-eval asks about.
        """
        if max(len(ids) for row in continuations for ids in row) == 1:
            # One-token answers are all read from the prefill's last logits: no cache, and no prefill of
            # its own when generate already ran on these prompts.
            prompt_logits = shared.prompt_logits(texts)
            return self._first_token_scores(prompt_logits, continuations)
        prefix = shared.model_inputs(texts)
        outputs = self.model(**prefix, **prefill_positions(self.model, prefix["attention_mask"]),
                             use_cache=True, logits_to_keep=1)
        num_options = len(continuations[0])
        flat = [ids for row in continuations for ids in row]
        later, later_greedy = self._later_token_scores(outputs.cache, prefix["attention_mask"], flat, num_options,
                                                       mrope_deltas(self.model, prefix))
        first, first_greedy = self._first_token_scores(outputs.logits[:, -1].float(), continuations)
        shape = (len(texts), num_options)
        return first + later.view(shape), first_greedy & later_greedy.view(shape)

    @staticmethod
    def _first_token_scores(prompt_logits: torch.Tensor,
                            continuations: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, options)`` log-probabilities of each option's first answer token after the prompt, and
        whether that token is the most likely one."""
        first = torch.log_softmax(prompt_logits.float(), dim=-1)
        first_ids = torch.tensor([[ids[0] for ids in row] for row in continuations], device=first.device)
        return first.gather(1, first_ids), first_ids == first.argmax(dim=-1, keepdim=True)

    def _later_token_scores(self, cache, prefix_mask: torch.Tensor, continuations: list[list[int]],
                            num_options: int,
                            rope_deltas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of every continuation token after the first, all options in one forward, and
        whether each of those tokens is the most likely one.

        The prefill cache is repeated per option, so the image and prompt are never encoded again. Positions
        continue after each prompt's real tokens; with ``rope_deltas`` (Qwen's mrope: text after an image
        continues from the image grid's largest position + 1) shifted by them, as ``generate`` shifts them.
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
        if rope_deltas is not None:
            positions = positions + rope_deltas.to(device).repeat_interleave(num_options, dim=0)
        logits = self.model(input_ids=inputs, attention_mask=torch.cat([prefix_mask, real], dim=1),
                            position_ids=positions, cache=cache, use_cache=True).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.clamp(min=0).unsqueeze(-1))
        greedy = ((logits.argmax(dim=-1) == targets) | (real == 0)).all(dim=1)
        return (log_probs.squeeze(-1) * real).sum(dim=1), greedy

    def continuation_ids(self, letter: str, option: str) -> list[int]:
        """Token ids of the assistant's answer after the generation prompt ("Assistant:", "ASSISTANT:",
        "<|im_start|>assistant\\n", ...), as the processor's chat template writes it.

        Tokenised in context (the generation prompt followed by the answer) so that a tokenizer
        that merges across the boundary is caught rather than silently mis-scored.
        """
        return self.answer_ids(self.answer_template.format(letter=letter, option=option))

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of the assistant turn ``answer`` after the generation prompt (with the end-of-turn token for
        the ``letter_name`` and ``name`` formats), tokenised in context as :meth:`continuation_ids` says."""
        if answer not in self._continuations:
            self._continuations[answer] = self._tokenize_continuation(answer)
        return self._continuations[answer]

    def _tokenize_continuation(self, answer: str) -> list[int]:
        processor, tokenizer = self.processor, self.processor.tokenizer
        user = {"role": "user", "content": [{"type": "text", "text": "?"}]}
        prompt = processor.apply_chat_template([user], add_generation_prompt=True)
        full = processor.apply_chat_template([user,
                                              {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        if not full.startswith(prompt):
            raise ValueError("the chat template's assistant turn does not extend its generation prompt; "
                             "likelihood scoring cannot locate the answer")
        # The generation prompt's last line, its own line break included (Qwen's ends in one).
        context = prompt[prompt.rstrip("\n").rfind("\n") + 1:]
        if self.with_end_of_turn:
            # Up to the end-of-turn token; the template's trailing whitespace (a newline, or LLaVA's space: its
            # template closes a turn with no end token) is no answer.
            continuation = full[len(prompt):].rstrip()
        else:
            continuation = full[len(prompt):full.index(answer, len(prompt)) + len(answer)]
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        joined_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if joined_ids[: len(context_ids)] != context_ids or len(joined_ids) == len(context_ids):
            raise ValueError(f"the tokenizer merges the answer {continuation!r} into the prompt's last token; "
                             "choose another likelihood answer format")
        return joined_ids[len(context_ids):]


# ----------------------------------------------------------------------------- embedding
class EmbeddingScorer(Scorer):
    """Zero-shot choice by image-text embedding similarity; category embeddings computed once."""

    name = "embedding"

    def __init__(self, model, processor, categories: list[str], text_batch_size: int = 64):
        self.model, self.processor, self.categories = model, processor, list(categories)
        self.category_index = {name: i for i, name in enumerate(self.categories)}
        self.category_embeds = model.embed_labels(self.categories, processor, batch_size=text_batch_size)

    @classmethod
    def prepare(cls, model, processor, benchmark, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                likelihood_answer: str = "letter") -> EmbeddingScorer:
        return cls(model, processor, benchmark.categories)

    def report_metrics(self, records: list[dict], bootstrap_samples: int, seed: int, setup_seconds: float) -> dict:
        """Top-1 / top-5 over all categories; the set-up is the category embeddings' cache."""
        from .report import top_k_metrics

        return {**top_k_metrics(records, bootstrap_samples, seed), "num_categories": len(self.categories),
                "category_cache_seconds": setup_seconds}

    @torch.no_grad()
    def similarities(self, images: list, shared: SharedBatch | None = None) -> torch.Tensor:
        """``(batch, categories)`` cosine similarities of the images to every category name."""
        shared = shared or SharedBatch(self.model, self.processor, images)
        if shared.shares_image_features:
            image_embeds = self.model.get_image_embeddings(image_features=shared.image_features().pooler_output)
        else:  # the family's image-summary rows through its base model, pixels included
            image_embeds = self.model.get_image_embeddings(**shared.embedding_inputs())
        return image_embeds.float() @ self.category_embeds.T

    def score(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        similarities = self.similarities(images, shared)
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
class OpenSetScorer(Scorer):
    """The model names the object; right when the normalised answer equals the normalised label."""

    name = "open_set"

    def __init__(self, model, processor, question: str, categories: list[str],
                 max_new_tokens: int = OPEN_SET_MAX_NEW_TOKENS):
        self.model, self.processor, self.question, self.max_new_tokens = model, processor, question, max_new_tokens
        self.categories = list(categories)

    @classmethod
    def prepare(cls, model, processor, benchmark, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                likelihood_answer: str = "letter") -> OpenSetScorer:
        return cls(model, processor, benchmark.open_set_question, benchmark.categories)

    def failures(self, records: list[dict], categories: list[str]) -> list[bool]:
        """Generation failures: an answer naming no category."""
        known = set(categories)
        return [record["predicted"] not in known for record in records]

    def score(self, images: list, items: list[PreparedExample], shared: SharedBatch | None = None) -> list[dict]:
        shared = shared or SharedBatch(self.model, self.processor, images)
        answers = shared.greedy_answers([self.question] * len(items), self.max_new_tokens)
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
    known = scoring_modes()
    unknown = [mode for mode in modes if mode not in known]
    if unknown or not modes:
        raise ValueError(f"unknown scoring mode(s) {unknown or list(modes)}; choose from {', '.join(known)}")
    return modes


def build_scorers(model, processor, benchmark, modes, max_new_tokens: int = FOCI_MAX_NEW_TOKENS,
                  likelihood_answer: str = "letter") -> dict:
    """One scorer per requested mode, each prepared for the benchmark (the embedding scorer embeds its
    categories now)."""
    return {mode: scorer_class(mode).prepare(model, processor, benchmark, max_new_tokens=max_new_tokens,
                                             likelihood_answer=likelihood_answer)
            for mode in check_modes(modes)}


__all__ = [
    "ANSWER_FORMATS", "EmbeddingScorer", "GenerateScorer", "LikelihoodScorer", "MC_MODES", "MODES", "OpenSetScorer",
    "PreparedExample", "Scorer", "SharedBatch", "build_scorers", "chat_prompts", "check_modes", "encode_prompts",
    "model_family", "prepare_examples",
]
