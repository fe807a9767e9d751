"""The letter-lookup probe (benchmarks/letter_lookup.py) asks what it says and scores the letter it asks for."""

import importlib.util

import numpy as np
import torch
from conftest import REPO_ROOT

from finedefics_data.prompts import LETTERS, multiple_choice_options


def _probe():
    spec = importlib.util.spec_from_file_location("letter_lookup", REPO_ROOT / "benchmarks" / "letter_lookup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_questions_put_the_right_letter_at_the_answer_position(tiny_processor):
    probe = _probe()
    questions = probe.LookupQuestions(tiny_processor, option_tokens=2)
    tokenizer = tiny_processor.tokenizer
    rng = np.random.default_rng(0)
    rights = []
    for _ in range(20):
        ids, start, right = questions.sample(rng)
        text = tokenizer.decode(ids[:start])
        options = multiple_choice_options(text.split("Assistant:")[0])
        asked = text.split("Which of these is ")[1].split("?")[0]
        assert len(options) == 4 and options[LETTERS[right]].startswith(asked.strip())
        assert ids[start] == questions.letter_ids[right]
        rights.append(right)
    assert len(set(rights)) > 1  # the right letter moves


def test_accuracy_reads_the_logits_that_predict_the_letter(tiny_processor):
    probe = _probe()
    questions = probe.LookupQuestions(tiny_processor, option_tokens=1)
    batch = questions.batch(np.random.default_rng(1), 8)

    class NextTokenOracle(torch.nn.Module):
        """Logits that name the next input token: right at the position before the letter, and only there."""

        def forward(self, input_ids, attention_mask):
            vocabulary = len(tiny_processor.tokenizer)
            logits = torch.zeros(*input_ids.shape, vocabulary)
            logits[:, :-1] = torch.nn.functional.one_hot(input_ids[:, 1:], vocabulary).float()
            return type("Output", (), {"logits": logits})()

    assert probe.accuracy(NextTokenOracle(), questions, [batch]) == 1.0
    shifted = dict(batch, answer_at=batch["answer_at"] + 1)  # one position late: reads the end of the turn
    assert probe.accuracy(NextTokenOracle(), questions, [shifted]) < 1.0
