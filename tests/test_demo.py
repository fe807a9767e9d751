"""`finedefics demo --quick` end to end: outputs exist and load, reruns resume, same seed -> same numbers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard

pytestmark = pytest.mark.slow

LOAD = textwrap.dedent(
    """
    import sys
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the species of the bird in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[Image.new("RGB", (64, 64), "white")]], text=[prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print("ANSWER", processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    """
)


def _demo(output_dir):
    return subprocess.run([sys.executable, "-m", "finedefics_training.cli", "demo", "--quick", "--output-dir", str(output_dir)],
                          capture_output=True, text=True, timeout=900, env={**os.environ})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    result = _demo(output_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir, result


def test_demo_prints_the_comparison_and_writes_the_report(demo_run):
    output_dir, result = demo_run
    assert "| finedefics |" in result.stdout and "| instruction_tuning |" in result.stdout
    report = json.loads((output_dir / "report" / "report.json").read_text())
    assert set(report["models"]) == {"base", "finedefics", "instruction_tuning", "no_hard_negatives"}
    for name, model_report in report["models"].items():
        assert set(model_report["modes"]) == {"generate", "likelihood", "embedding", "open_set"}, name
        for metrics in model_report["modes"].values():
            assert 0.0 <= metrics["accuracy"] <= 1.0
        assert model_report["modes"]["embedding"]["rare_vs_common"]["rare"]["n"] > 0
        assert (output_dir / "report" / name / "report.md").is_file()
    curves = report["training_curves"]["finedefics"]
    assert any("loss_object_attribute" in entry for entry in curves)
    assert not any("loss_object_attribute" in entry for entry in report["training_curves"]["instruction_tuning"])
    # Same optimizer steps for every variant.
    last_steps = {name: max(entry["step"] for entry in history) for name, history in report["training_curves"].items()}
    assert len(set(last_steps.values())) == 1, last_steps
    assert (output_dir / "report" / "training_curves.png").stat().st_size > 10_000
    assert "stands in for" in (output_dir / "report" / "report.md").read_text()


def test_demo_model_loads_in_a_fresh_process_with_its_card(demo_run):
    output_dir, _ = demo_run
    model_dir = output_dir / "model"
    result = subprocess.run([sys.executable, "-c", LOAD, str(model_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ANSWER" in result.stdout
    card = ModelCard.load(model_dir / "README.md")
    accuracies = [result.metric_value for result in card.data.eval_results]
    stored = json.loads((output_dir / "report" / "report.json").read_text())["models"]["finedefics"]["modes"]
    assert any(value == pytest.approx(100 * stored["generate"]["accuracy"], abs=0.01)
               or value == pytest.approx(stored["generate"]["accuracy"], abs=1e-4) for value in accuracies)


def test_rerun_resumes_and_same_seed_gives_the_same_numbers(demo_run, tmp_path):
    output_dir, _ = demo_run
    rerun = _demo(output_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("already done") >= 9  # every phase but the summary was skipped
    fresh = _demo(tmp_path / "again")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    first = json.loads((output_dir / "report" / "report.json").read_text())["comparison"]
    second = json.loads((tmp_path / "again" / "report" / "report.json").read_text())["comparison"]
    assert first == second
