"""Metrics (the shipped `evaluate` modules, loaded by path offline), evaluate_model end to end with
skipped images, the written report (JSON, Markdown, FOCI prediction files, plots), and FOCI's own
prediction files reported the same way."""

import json
import re

import pytest
from conftest import FOCI_RESULT_NAMES, foci_result_file
from eval_helpers import small_synthetic_benchmark

from finedefics_eval.foci import read_prediction_file
from finedefics_eval.report import load_metric, metrics_dir, report_from_prediction_file, write_report


# ----------------------------------------------------------------------------- metric modules
def test_metric_modules_have_one_import_per_line():
    # evaluate's import scanner reads one module name per import line.
    for path in sorted(metrics_dir().glob("*/*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^(import|from)\s", line):
                assert "," not in line, f"{path.name}: {line}"


def test_accuracy_module_counts_hits_and_brackets_them_with_a_reproducible_interval():
    metric = load_metric("accuracy")
    predictions = ["a"] * 70 + ["b"] * 30
    result = metric.compute(predictions=predictions, references=["a"] * 100, bootstrap_samples=500, seed=3)
    assert result["accuracy"] == 0.7 and result["n"] == 100
    low, high = result["ci95"]
    assert 0.58 < low < 0.7 < high < 0.8  # binomial 95% interval at n=100 is about +-0.09
    again = metric.compute(predictions=predictions, references=["a"] * 100, bootstrap_samples=500, seed=3)
    assert again["ci95"] == result["ci95"]
    wider = metric.compute(predictions=predictions[::10], references=["a"] * 10, bootstrap_samples=500, seed=3)
    assert wider["ci95"][1] - wider["ci95"][0] > high - low
    assert metric.compute(predictions=["x"], references=["x"], bootstrap_samples=0)["ci95"] is None


def test_macro_accuracy_weighs_every_class_equally():
    # Class a: 9 of 9 right; class b: 0 of 1 right. Plain accuracy 0.9, macro accuracy 0.5.
    result = load_metric("macro_accuracy").compute(predictions=["a"] * 10, references=["a"] * 9 + ["b"],
                                                   bootstrap_samples=200)
    assert result["macro_accuracy"] == 0.5 and result["per_class"] == {"a": 1.0, "b": 0.0}
    assert result["num_classes"] == 2 and result["ci95"][0] <= 0.5 <= result["ci95"][1]


def test_generation_failure_rate_module():
    result = load_metric("generation_failure_rate").compute(failures=[True, False, False, False] * 5,
                                                            bootstrap_samples=300)
    assert (result["failure_rate"], result["failures"], result["n"]) == (0.25, 5, 20)
    assert result["ci95"][0] < 0.25 < result["ci95"][1]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """The synthetic test split with one image deleted and one corrupted, scored in all four modes."""
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.runner import evaluate_model
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    folder = small_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "synth")
    bench = load_benchmark(str(folder))
    (folder / bench.examples[0].image).unlink()
    (folder / bench.examples[1].image).write_bytes(b"not a png")
    processor = build_tiny_processor(build_tiny_tokenizer(bench.categories))
    model = build_tiny_model(processor, preset="micro", seed=0)
    report = evaluate_model(model, processor, bench, modes=("generate", "likelihood", "embedding", "open_set"),
                            seed=7, batch_size=4, bootstrap_samples=100, progress=False, model_name="micro")
    return bench, report


def test_missing_and_unreadable_images_are_counted_reported_and_the_run_goes_on(synthetic_run):
    bench, report = synthetic_run
    assert report["skipped"]["missing_images"] == 1 and report["skipped"]["unreadable_images"] == 1
    assert report["skipped"]["examples"] == [bench.examples[0].image, bench.examples[1].image]
    assert (report["n"], report["n_scored"]) == (len(bench), len(bench) - 2)
    assert all(m["n"] == len(bench) - 2 and len(report["predictions"][mode]) == len(bench) - 2
               for mode, m in report["modes"].items())


def test_report_holds_the_identity_and_every_modes_numbers(synthetic_run):
    bench, report = synthetic_run
    assert (report["model"], report["benchmark"], report["split"], report["seed"]) == ("micro", "synth", "test", 7)
    for mode, metrics in report["modes"].items():
        records = report["predictions"][mode]
        assert metrics["accuracy"] == sum(r["predicted"] == r["correct"] for r in records) / len(records)
        assert metrics["ci95"][0] <= metrics["accuracy"] <= metrics["ci95"][1]
        assert metrics["images_per_second"] > 0 and metrics["seconds"] > 0
        assert set(metrics["rare_vs_common"]) == {"rare", "common"}
        assert metrics["rare_vs_common"]["rare"]["n"] == sum(r["correct"] in bench.rare_categories for r in records)
    assert report["modes"]["likelihood"]["failures"] == report["modes"]["embedding"]["failures"] == 0
    generate = report["predictions"]["generate"]
    assert report["modes"]["generate"]["failures"] == sum(r["predicted"].startswith("NA ### ") for r in generate)
    embedding = report["modes"]["embedding"]
    assert embedding["top1_all"] <= embedding["top5_all"] and embedding["num_categories"] == len(bench.categories)


def test_all_modes_see_the_same_seeded_option_order(synthetic_run):
    _, report = synthetic_run
    orders = {mode: [r["options"] for r in records] for mode, records in report["predictions"].items()}
    assert orders["generate"] == orders["likelihood"] == orders["embedding"] == orders["open_set"]


def test_written_report_files(synthetic_run, tmp_path):
    _, report = synthetic_run
    folder = write_report(report, tmp_path / "out")
    saved = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert ("predictions" not in saved
            and saved["modes"]["likelihood"]["accuracy"] == report["modes"]["likelihood"]["accuracy"])
    for mode, name in saved["files"]["predictions"].items():
        run = read_prediction_file(folder / name)
        assert run.predictions == report["predictions"][mode]
        assert run.metrics["accuracy"] == pytest.approx(report["modes"][mode]["accuracy"])
        assert run.config["seed"] == 7 and run.config["dataset"] == "synth"
    plots = saved["files"]["plots"]
    assert {"plots/accuracy_by_mode.png", "plots/rare_vs_common.png",
            "plots/per_class_accuracy-embedding.png"} <= set(plots)
    assert all((folder / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert "1 missing and 1 unreadable images" in markdown
    assert f"| likelihood | {100 * report['modes']['likelihood']['accuracy']:.2f} |" in markdown


def test_a_benchmark_whose_images_are_all_missing_is_a_clear_error(tmp_path, tiny_processor, micro_model):
    from eval_helpers import write_option_benchmark

    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.runner import evaluate_model

    bench = load_benchmark(str(write_option_benchmark(tmp_path / "b")), image_root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"none of its 12 images could be read \(12 missing, 0 unreadable\)"):
        evaluate_model(micro_model, tiny_processor, bench, modes=("embedding",), progress=False)


# ----------------------------------------------------------------------------- FOCI's files
@pytest.mark.parametrize("name", FOCI_RESULT_NAMES)
def test_focis_prediction_files_report_their_stored_accuracy(name, tmp_path):
    path = foci_result_file(name)
    stored = json.loads(path.read_text(encoding="utf-8"))
    report = report_from_prediction_file(path, bootstrap_samples=200)
    generate = report["modes"]["generate"]
    assert generate["accuracy"] == pytest.approx(stored["metrics"]["accuracy"], abs=1e-12)
    assert generate["failure_rate"] == stored["metrics"]["generation_failures"]
    assert report["benchmark"] == stored["config"]["dataset"] and report["n"] == len(stored["predictions"])
    assert len(generate["per_class"]) == len({p["correct"] for p in stored["predictions"]})
    folder = write_report(report, tmp_path / "out")
    assert json.loads((folder / "predictions-generate.json").read_text(encoding="utf-8")) == stored


def test_a_prediction_file_whose_stored_accuracy_disagrees_is_refused(tmp_path):
    data = json.loads(foci_result_file().read_text(encoding="utf-8"))
    data["metrics"]["accuracy"] += 0.01
    (tmp_path / "edited.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"edited\.json: stored metrics\.accuracy .* differs from"):
        report_from_prediction_file(tmp_path / "edited.json", bootstrap_samples=0)
