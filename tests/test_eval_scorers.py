"""A scoring mode is a Scorer registered by name: a throwaway mode registered from this file runs through the
generic evaluation path (mode check, set-up, scoring in batches, failures and its own metrics in the report)."""

import pytest
from eval_helpers import write_option_benchmark

from finedefics_eval import scorers
from finedefics_eval.foci import prediction_record
from finedefics_eval.scoring import OpenSetScorer, Scorer, check_modes


class AlwaysFirstScorer(Scorer):
    """Answers the first shown option, or nothing readable for every third image."""

    name = "always_first"

    def __init__(self, categories):
        self.categories = categories

    @classmethod
    def prepare(cls, model, processor, benchmark, **settings):
        return cls(benchmark.categories)

    def score(self, images, items, shared=None):
        answers = ["NA" if int(item.example.example_id) % 3 == 2 else "A" for item in items]
        return [prediction_record(item.example.image, item.shown_options, item.example.groundtruth, answer,
                                  answer if answer == "A" else None) for item, answer in zip(items, answers)]

    def report_metrics(self, records, bootstrap_samples, seed, setup_seconds):
        return {"categories_seen": len(self.categories)}


class _NoModel:
    name_or_path = "no-model"

    def eval(self):
        return self


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(scorers._SCORERS, "always_first", f"{__name__}.AlwaysFirstScorer")


def test_a_registered_mode_runs_through_the_generic_evaluation(registered, tmp_path):
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.runner import evaluate_model

    benchmark = load_benchmark(str(write_option_benchmark(tmp_path)))
    assert check_modes(["always_first"]) == ("always_first",)
    report = evaluate_model(_NoModel(), None, benchmark, modes=["always_first"], batch_size=4, progress=False,
                            bootstrap_samples=0)
    metrics = report["modes"]["always_first"]
    assert metrics["categories_seen"] == len(benchmark.categories)
    unreadable = sum(1 for item in benchmark.examples if int(item.example_id) % 3 == 2)
    assert metrics["failures"] == unreadable and len(report["predictions"]["always_first"]) == len(benchmark)


def test_the_registry_refuses_a_second_mode_of_one_name_and_an_unknown_one():
    with pytest.raises(ValueError, match="registered already"):
        scorers.register_scorer("generate", "somewhere.Else")
    with pytest.raises(ValueError, match="unknown scoring mode"):
        scorers.scorer_class("no_such_mode")
    assert scorers.scorer_class("open_set") is OpenSetScorer
    assert scorers.scoring_modes() == ("generate", "likelihood", "embedding", "open_set")


def test_open_set_failures_are_answers_naming_no_category():
    records = [{"predicted": "Corvel Tit", "options": []}, {"predicted": "a bird", "options": []}]
    assert OpenSetScorer.failures(None, records, ["Corvel Tit"]) == [False, True]
    choice = [{"predicted": "Corvel Tit", "options": ["Corvel Tit"]}, {"predicted": "NA", "options": ["x"]}]
    assert Scorer().failures(choice, []) == [False, True]
