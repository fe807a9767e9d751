"""Model cards: model-index results from eval reports that parse back with huggingface_hub, the template
shipped in the package, and a checkpoint README.md that accumulates results across evaluations."""

import json

import pytest
from conftest import REPO_ROOT, foci_result_file
from huggingface_hub import ModelCard

from finedefics_eval.model_card import eval_results_from_report, render_model_card, template_path, write_model_card
from finedefics_eval.report import report_from_prediction_file

SYNTH_REPORT = {
    "model": "runs/final", "benchmark": "synth", "split": "test", "seed": 0, "n": 60, "n_scored": 60,
    "benchmark_info": {"display_name": "Finedefics synthetic birds (synth)", "dataset_type": "finedefics-synthetic"},
    "modes": {
        "generate": {"accuracy": 0.6133, "ci95": [0.55, 0.68], "failures": 2},
        "likelihood": {"accuracy": 0.7021, "ci95": [0.64, 0.76], "failures": 0},
        "embedding": {"accuracy": 0.5, "ci95": [0.43, 0.57], "failures": 0,
                      "top1_all": 0.25, "top1_all_ci95": [0.2, 0.3],
                      "top5_all": 0.75, "top5_all_ci95": [0.7, 0.8], "num_categories": 28},
        "open_set": {"accuracy": 0.125, "ci95": [0.08, 0.17], "failures": 9},
    },
}


def metrics_by_config(card: ModelCard) -> dict:
    return {(r.dataset_type, r.metric_config): r.metric_value for r in card.data.eval_results}


def test_the_shipped_template_is_a_copy_of_the_repository_master():
    assert template_path().read_bytes() == (REPO_ROOT / "model_card.md").read_bytes(), (
        "eval/templates/model_card.md must equal the master model_card.md: cp model_card.md eval/templates/")


def test_card_metadata_parses_back_with_every_modes_number():
    text = render_model_card(SYNTH_REPORT, recipe={"learning_rate": 2e-4}, base_model="HuggingFaceM4/idefics2-8b",
                             repo_id="me/finedefics-tiny")
    card = ModelCard(text)
    assert metrics_by_config(card) == {
        ("finedefics-synthetic", "generate"): 61.33, ("finedefics-synthetic", "likelihood"): 70.21,
        ("finedefics-synthetic", "embedding"): 50.0, ("finedefics-synthetic", "embedding-top1_all"): 25.0,
        ("finedefics-synthetic", "embedding-top5_all"): 75.0, ("finedefics-synthetic", "open_set"): 12.5,
    }
    assert card.data.model_name == "finedefics-tiny" and card.data.base_model == "HuggingFaceM4/idefics2-8b"
    assert {r.task_type for r in card.data.eval_results if r.metric_config == "open_set"} == {"image-text-to-text"}
    assert "| Finedefics synthetic birds (synth) | test | accuracy (likelihood) | 70.21 | 64.00 – 76.00 |" in text
    assert 'from_pretrained("me/finedefics-tiny", trust_remote_code=True)' in text
    assert "learning_rate: 0.0002" in text and "{{" not in text


def test_focis_prediction_files_become_model_index_entries_with_their_accuracy():
    path = foci_result_file("bird-200-finedefics-release-run")
    report = report_from_prediction_file(path, bootstrap_samples=0)
    (result,) = eval_results_from_report(report)
    assert (result.dataset_type, result.dataset_name) == ("cub_200_2011", "CUB-200-2011 (FOCI bird-200)")
    assert result.metric_value == round(100 * report["modes"]["generate"]["accuracy"], 2) == 47.96


def test_summary_reports_of_several_benchmarks_are_accepted():
    summary = {"benchmarks": {"bird-200": {"accuracy": 0.6971},
                              "car-196": {"modes": {"generate": {"accuracy": 0.8467}}}}}
    card = ModelCard(render_model_card(summary))
    assert metrics_by_config(card) == {("cub_200_2011", None): 69.71, ("stanford_cars", "generate"): 84.67}


def test_a_card_without_results_says_how_to_get_them():
    text = render_model_card(None)
    assert ModelCard(text).data.eval_results is None and "run `finedefics eval`" in text


def test_checkpoint_readme_accumulates_results_and_replaces_remeasured_ones(tmp_path):
    write_model_card(tmp_path, SYNTH_REPORT, base_model="HuggingFaceM4/idefics2-8b")
    bird = {"benchmark": "bird-200", "split": "test", "modes": {"generate": {"accuracy": 0.697, "ci95": [0.68, 0.71]}}}
    write_model_card(tmp_path, bird)
    again = {**SYNTH_REPORT, "modes": {"generate": {"accuracy": 0.8, "ci95": [0.7, 0.9]}}}
    card = ModelCard.load(write_model_card(tmp_path, again))
    metrics = metrics_by_config(card)
    assert metrics[("finedefics-synthetic", "generate")] == 80.0  # re-measured: replaced
    assert metrics[("finedefics-synthetic", "likelihood")] == 70.21  # kept from the first card
    assert metrics[("cub_200_2011", "generate")] == 69.7
    assert len(metrics) == 7 and card.data.base_model == "HuggingFaceM4/idefics2-8b"


def test_bad_reports_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither 'modes' nor 'benchmarks'"):
        render_model_card({"model": "x"})
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        write_model_card(tmp_path / "missing", SYNTH_REPORT)


# ----------------------------------------------------------------------------- partial evaluations
def test_a_card_from_a_limited_eval_with_a_missing_image_states_n_limit_and_skips(micro_checkpoint, tmp_path):
    """`eval --limit --write-card` over a benchmark with a missing image: the figure is not passed off as the
    split's result; its name and model-index say how many examples it covers, the limit and the skips."""
    from eval_helpers import write_option_benchmark

    from finedefics_cli import main

    option_file = write_option_benchmark(tmp_path / "bench", per_category=2, labels=[
        "Corvel Tit", "Mirel Finch", "Velmoran Thistlewing", "Tarrow Tit"])
    first = next(iter(json.loads(option_file.read_text(encoding="utf-8")).values()))[0]["image"]
    (option_file.parent / first).unlink()

    assert main(["eval", "--model", str(micro_checkpoint), "--benchmark", str(option_file), "--mode", "embedding",
                 "--limit", "5", "--output-dir", str(tmp_path / "eval"), "--no-plots", "--no-progress",
                 "--bootstrap-samples", "0", "--write-card"]) == 0

    card = ModelCard.load(micro_checkpoint / "README.md")
    (result, *_) = [r for r in card.data.eval_results if r.metric_config == "embedding"]
    assert result.metric_args == {"n_scored": 4, "n": 5, "limit": 5, "num_examples_before_limit": 8,
                                  "missing_images": 1, "unreadable_images": 0}
    assert "partial: N=4 of 8 examples (--limit 5), 1 image skipped (1 missing, 0 unreadable)" in result.metric_name
    table_row = next(line for line in card.text.splitlines() if line.startswith("|") and "(embedding;" in line)
    assert "N=4 of 8" in table_row and f"{result.metric_value:.2f}" in table_row


def test_a_card_from_a_whole_split_carries_no_partial_note():
    report = {"benchmark": "synth", "n": 8, "n_scored": 8, "skipped": {"missing_images": 0, "unreadable_images": 0},
              "benchmark_info": {"limit": None}, "modes": {"generate": {"accuracy": 0.5}}}
    (result,) = eval_results_from_report(report)
    assert result.metric_name == "accuracy (generate)" and result.metric_args is None
