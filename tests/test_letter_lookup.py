"""The letter-lookup probe (benchmarks/letter_lookup.py) asks what it says and scores the letter it asks for."""

import importlib.util
import json

import numpy as np
import pytest
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


def test_the_asked_word_does_not_tell_its_letter(tiny_processor):
    """Guessing each word's most frequent letter must do no better than chance: a letter that follows from the
    asked word is learnable without any lookup (options once came in a set's hash order: 57% on the demo base)."""
    from collections import Counter

    probe = _probe()
    questions = probe.LookupQuestions(tiny_processor, option_tokens=1)
    tokenizer = tiny_processor.tokenizer
    rng = np.random.default_rng(0)
    letters_of, samples = {}, 2000
    for _ in range(samples):
        ids, start, right = questions.sample(rng)
        asked = tokenizer.decode(ids[:start]).split("Which of these is ")[1].split("?")[0]
        letters_of.setdefault(asked, []).append(right)
    guessed = sum(Counter(letters).most_common(1)[0][1] for letters in letters_of.values()) / samples
    assert samples / len(letters_of) >= 10  # enough questions per word for the guess to mean something
    assert guessed < 0.4, f"the asked word gives its letter {guessed:.0%} of the time (chance 25%)"


def test_questions_do_not_depend_on_the_hash_seed(tiny_processor, tmp_path):
    """The same seed draws the same questions in any process (a set's order changes with PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    tiny_processor.save_pretrained(tmp_path)
    probe_file = str(REPO_ROOT / "benchmarks" / "letter_lookup.py")
    script = ("import importlib.util, sys, numpy as np\n"
              "from modeling_finedefics import FinedeficsProcessor\n"
              f"spec = importlib.util.spec_from_file_location('p', {probe_file!r})\n"
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              f"q = m.LookupQuestions(FinedeficsProcessor.from_pretrained({str(tmp_path)!r}), 1)\n"
              "rng = np.random.default_rng(0)\n"
              "print([q.sample(rng)[0] for _ in range(5)])\n")
    outputs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outputs[0] == outputs[1] and outputs[0].strip()


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


def _predictions(folder, mode, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"predictions-{mode}.json").write_text(json.dumps({"predictions": rows}))


def test_answer_agreement_compares_each_letter_with_the_models_own_name(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("answer_agreement",
                                                  REPO_ROOT / "benchmarks" / "answer_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def row(image, predicted, raw, correct="Ash"):
        return {"image": image, "predicted": predicted, "predicted_raw": raw, "correct": correct}

    model = tmp_path / "seed-0" / "finedefics"
    # named right twice, of which the letter is right once; the letter agrees with the name on images 1 and 3
    _predictions(model, "generate", [row("1", "Ash", "A"), row("2", "Cor", "C"), row("3", "Dun", "D")])
    _predictions(model, "open_set", [row("1", "Ash", "Ash"), row("2", "Ash", "Ash"), row("3", "Dun", "Dun")])
    result = module.main([str(tmp_path)])["seed-0/finedefics"]
    assert result["agreement"] == pytest.approx(2 / 3)
    assert result["letter_right_when_name_right"] == pytest.approx(1 / 2)
    assert result["letters"] == {"A": 1, "C": 1, "D": 1}
    assert "| finedefics | 1 | 66.7 | 50.0 |" in capsys.readouterr().out

    _predictions(model, "open_set", [row("2", "Ash", "Ash"), row("1", "Ash", "Ash"), row("3", "Dun", "Dun")])
    with pytest.raises(ValueError, match="finedefics: .* do not list the same images"):
        module.main([str(tmp_path)])
