"""`finedefics eval`: a saved checkpoint on the synthetic benchmark, FOCI file import, the model card,
and bad input reported as one line with exit code 2."""

import json

import pytest
from conftest import foci_result_file
from eval_helpers import small_synthetic_benchmark
from huggingface_hub import ModelCard

from finedefics_cli import main


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return small_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "synth")


def test_eval_writes_reports_predictions_plots_and_the_card(micro_checkpoint, synthetic, tmp_path, capsys):
    output = tmp_path / "eval"
    code = main(["eval", "--model", str(micro_checkpoint), "--benchmark", str(synthetic), "--mode", "generate",
                 "likelihood", "embedding", "--output-dir", str(output), "--batch-size", "6", "--seed", "3",
                 "--bootstrap-samples", "50", "--no-progress", "--write-card"])
    assert code == 0
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    assert (report["benchmark"], report["seed"], report["model"]) == ("synth", 3, str(micro_checkpoint))
    assert set(report["modes"]) == {"generate", "likelihood", "embedding"}
    assert all((output / f"predictions-{mode}.json").is_file() for mode in report["modes"])
    assert (output / "report.md").is_file() and (output / "plots" / "accuracy_by_mode.png").is_file()
    printed = capsys.readouterr().out
    accuracy = 100 * report["modes"]["likelihood"]["accuracy"]
    assert f"synth likelihood: accuracy {accuracy:.2f}" in printed
    card = ModelCard.load(micro_checkpoint / "README.md")
    values = {r.metric_config: r.metric_value for r in card.data.eval_results}
    assert values["likelihood"] == round(accuracy, 2)


def test_eval_imports_focis_prediction_files_with_a_summary(tmp_path, capsys):
    bird_results = foci_result_file("bird-200-finedefics-release-run")
    car_results = foci_result_file("car-196-finedefics-release-run")
    assert main(["eval", "--import-foci", str(bird_results), str(car_results), "--output-dir", str(tmp_path),
                 "--bootstrap-samples", "0", "--no-plots"]) == 0
    summary = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    for name, path in (("bird-200", bird_results), ("car-196", car_results)):
        stored = json.loads(path.read_text(encoding="utf-8"))["metrics"]["accuracy"]
        assert summary["benchmarks"][name]["modes"]["generate"]["accuracy"] == pytest.approx(stored, abs=1e-12)
        assert (tmp_path / name / "report.json").is_file()
    mean = (summary["benchmarks"]["bird-200"]["modes"]["generate"]["accuracy"]
            + summary["benchmarks"]["car-196"]["modes"]["generate"]["accuracy"]) / 2
    assert summary["mean_accuracy"]["generate"] == {"accuracy": pytest.approx(mean), "benchmarks": 2}
    assert f"| **mean** | {100 * mean:.2f} |" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "bird-200 generate: accuracy 47.96" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--benchmark", "bird-200"], "needs --image-root"),
    (["--benchmark", "foci:bird-2000"], "unknown FOCI dataset 'bird-2000'"),
    (["--benchmark", "/no/such/benchmark"], "benchmark not found"),
    (["--benchmark", "pet-37", "--image-root", "/no/such/images"], "image root not found"),
])
def test_bad_input_is_one_line_with_exit_code_2(micro_checkpoint, tmp_path, capsys, arguments, message):
    code = main(["eval", "--model", str(micro_checkpoint), "--output-dir", str(tmp_path), *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1


def test_an_empty_benchmark_is_one_line_with_exit_code_2(micro_checkpoint, tmp_path, capsys):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    code = main(["eval", "--model", str(micro_checkpoint), "--benchmark", str(tmp_path / "empty"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "the benchmark would be empty" in capsys.readouterr().err


def test_eval_needs_a_model_or_foci_files(tmp_path, capsys):
    assert main(["eval", "--output-dir", str(tmp_path)]) == 2
    assert "give --model and --benchmark, or --import-foci" in capsys.readouterr().err


def test_an_imagefolder_gets_options_mined_with_the_models_text_embeddings(micro_checkpoint, tmp_path):
    from eval_helpers import BIRDS, COLOURS
    from PIL import Image

    for c, label in enumerate(BIRDS[:5]):
        (tmp_path / "folder" / "test" / label).mkdir(parents=True)
        Image.new("RGB", (16, 16), COLOURS[c]).save(tmp_path / "folder" / "test" / label / "0.png")
    assert main(["eval", "--model", str(micro_checkpoint), "--benchmark", str(tmp_path / "folder"), "--mode",
                 "embedding", "--output-dir", str(tmp_path / "out"), "--no-progress", "--no-plots"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["benchmark_info"]["options_source"] == "hard negatives from model_text_embeddings"
    assert report["n_scored"] == 5


def test_the_commands_mode_choices_are_the_scorers_modes_and_help_needs_no_torch():
    import subprocess
    import sys

    from finedefics_cli import build_parser
    from finedefics_eval.scoring import MODES

    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    mode_action = next(action for action in eval_parser._actions if action.dest == "mode")
    assert tuple(mode_action.choices) == MODES
    # Why the mode registry (scorers.py) names its classes by import path: `finedefics --help` must not load torch.
    # The model checks every command runs first are as light (the family registry loads only when a check needs it).
    probe = ("import sys, finedefics_cli, finedefics_training.checkpoints, finedefics_eval.loading; "
             "finedefics_cli.build_parser(); print('torch' in sys.modules)")
    assert (subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
            .stdout.strip() == "False")
