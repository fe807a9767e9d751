"""Can the demo's decoder learn to answer a multiple choice by letter? A species-free probe.

The FOCI generate mode needs one in-context skill: find the option that matches what the model has in
mind and write the letter in front of it. This probe isolates that skill in its easiest form, an exact
copy: "Which of these is <word>?  A. <w1> B. <word> C. <w3> D. <w4>" -> "B", the options drawn from the
checkpoint's own vocabulary (no category names, no image). It trains the checkpoint's decoder (and LM head)
on such questions, in the chat format and with the letter as the only supervised answer, as stage II trains
a multiple choice, and reports the accuracy on held-out questions as training goes on. Chance is 25%.

    python benchmarks/letter_lookup.py --steps 1000                      # the shipped demo base
    python benchmarks/letter_lookup.py path/to/checkpoint --option-tokens 3 --steps 3000

It separates "the decoder cannot do the lookup at all" from "the lookup is learnable, but not for these
names in this many steps": the demo's species names are five to seven tokens long and share their genus
word with the other options, which ``--option-tokens`` approaches.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from finedefics_data.prompts import LETTERS, lookup_choice_query, multiple_choice_prompt


def option_vocabulary(tokenizer) -> list[int]:
    """Word-like tokens (a space and at least three letters) that can be options on their own."""
    ids = []
    for token, index in tokenizer.get_vocab().items():
        word = token[1:] if token.startswith("Ġ") else ""
        if len(word) >= 3 and word.isalpha():
            ids.append(index)
    return sorted(ids)


class LookupQuestions:
    """Exact-copy multiple choices in the chat format, tokenized as the collator does (BOS, template)."""

    def __init__(self, processor, option_tokens: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.vocabulary = option_vocabulary(self.tokenizer)
        self.option_tokens = option_tokens
        self.letter_ids = [self._answer_ids(letter)[0] for letter in LETTERS[:4]]

    def _chat(self, question: str, answer: str | None) -> str:
        messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=answer is None)

    def _answer_ids(self, letter: str) -> list[int]:
        prompt = self.tokenizer(self._chat("?", None))["input_ids"]
        full = self.tokenizer(self._chat("?", letter))["input_ids"]
        return full[len(prompt):]

    def sample(self, rng: np.random.Generator) -> tuple[list[int], int, int]:
        """(token ids of question + answer, index of the answer's letter token, the right letter's index)."""
        options = set()
        while len(options) < 4:
            words = rng.choice(self.vocabulary, self.option_tokens)
            options.add(self.tokenizer.decode(words).strip())
        # In the order drawn from ``rng``, never in the set's: a set of strings iterates in hash order, which is
        # fixed within a process, so each word would sit at much the same letter whatever it is asked with and
        # the letter could be learned from the asked word alone, with no lookup (as an earlier version allowed).
        options = [sorted(options)[i] for i in rng.permutation(len(options))]
        right = int(rng.integers(4))
        question = multiple_choice_prompt(lookup_choice_query(options[right]), options)
        prompt = self.tokenizer(self._chat(question, None))["input_ids"]
        full = self.tokenizer(self._chat(question, LETTERS[right]))["input_ids"]
        if full[:len(prompt)] != prompt:
            raise RuntimeError("the chat template tokenizes the prompt differently with an answer after it")
        return full, len(prompt), right

    def batch(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        rows = [self.sample(rng) for _ in range(size)]
        length = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((size, length), self.tokenizer.pad_token_id)
        attention_mask = torch.zeros((size, length), dtype=torch.long)
        labels = torch.full((size, length), -100)
        answer_at = torch.zeros(size, dtype=torch.long)
        right = torch.zeros(size, dtype=torch.long)
        for i, (ids, start, letter) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(ids)] = 1
            labels[i, start:len(ids)] = torch.tensor(ids[start:])  # the letter and the end of the turn
            answer_at[i], right[i] = start, letter
        return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, answer_at=answer_at,
                    right=right)


@torch.no_grad()
def accuracy(model, questions: LookupQuestions, batches: list[dict]) -> float:
    model.eval()
    correct = total = 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows = torch.arange(len(logits))
        letter_logits = logits[rows, batch["answer_at"] - 1][:, questions.letter_ids]
        correct += int((letter_logits.argmax(-1) == batch["right"]).sum())
        total += len(rows)
    model.train()
    return correct / total


def main() -> None:
    from finedefics_training.demo.shipped_base import shipped_base_dir
    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="checkpoint folder (default: the shipped demo base)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--option-tokens", type=int, default=1, help="vocabulary tokens per option (1: one word)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="write the curve as JSON here")
    args = parser.parse_args()

    source = args.model or str(shipped_base_dir())
    torch.manual_seed(args.seed)
    model = FinedeficsForConditionalGeneration.from_pretrained(source)
    processor = FinedeficsProcessor.from_pretrained(source)
    questions = LookupQuestions(processor, args.option_tokens)
    held_out = [questions.batch(np.random.default_rng([args.seed, 1]), 64) for _ in range(4)]
    decoder = [p for name, p in model.named_parameters() if name.startswith(("model.text_model.", "lm_head."))]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in decoder:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder, lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, args.steps) / args.steps)))
    rng = np.random.default_rng([args.seed, 0])
    curve = [{"step": 0, "accuracy": accuracy(model, questions, held_out)}]
    print(f"{source}: {len(questions.vocabulary)} option words; step 0: {curve[0]['accuracy']:.1%}", flush=True)
    started = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        batch = questions.batch(rng, args.batch_size)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            held_out_accuracy = accuracy(model, questions, held_out)
            curve.append({"step": step, "loss": round(loss.item(), 4), "accuracy": held_out_accuracy})
            print(f"step {step}: loss {loss.item():.3f}, held-out accuracy {curve[-1]['accuracy']:.1%} "
                  f"({time.time() - started:.0f} s)", flush=True)
    result = {"model": source, "option_tokens": args.option_tokens, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "chance": 0.25, "curve": curve}
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps({"final_accuracy": curve[-1]["accuracy"], "steps": args.steps}))


if __name__ == "__main__":
    main()
