"""benchmarks/letter_skill.py asks the premise's text multiple choice of the base and every trained stage of a
demo run: the same questions of every model, both forms, and a clear error for a folder that is not a run."""

import importlib.util
import json
import shutil

import pytest
from conftest import REPO_ROOT
from describe_helpers import DEMO_BASE

from finedefics_data.synth import SynthConfig, generate_benchmark

SMALL = SynthConfig(num_genera=2, species_per_genus=2, train_per_category=3, rare_train_per_category=1,
                    test_per_category=1, validation_per_category=1)


def _script():
    spec = importlib.util.spec_from_file_location("letter_skill", REPO_ROOT / "benchmarks" / "letter_skill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A demo folder's layout: the benchmark, the base, one trained stage (the base again) and an unfinished one."""
    run = tmp_path_factory.mktemp("demo-run")
    generate_benchmark(run / "data", SMALL, progress=False, overwrite=True)
    shutil.copytree(DEMO_BASE, run / "runs" / "base" / "final")
    shutil.copytree(DEMO_BASE, run / "runs" / "seed-0" / "finedefics-1" / "final")
    (run / "runs" / "seed-0" / "finedefics-2" / "checkpoint-100").mkdir(parents=True)  # interrupted: no final/
    return run


def test_every_trained_stage_is_asked_the_same_questions_as_the_base(demo_run, tmp_path, capsys):
    script = _script()
    assert list(script.stage_folders(demo_run, 0)) == ["base", "finedefics-1"]
    output = tmp_path / "letter_skill.json"
    assert script.main([str(demo_run), "--seed", "0", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert set(results) == {"base", "finedefics-1"} and set(results["base"]) == {"named", "described"}
    # Four species, each with three siblings as options, asked once with the answer at every letter.
    assert all(form["questions"] == 16 and sum(form["answered_letters"].values()) == 16
               for forms in results.values() for form in forms.values())
    # The same weights answer the same questions alike: the stage is asked exactly what the base was.
    assert results["finedefics-1"] == results["base"]
    table = capsys.readouterr().out
    assert "| finedefics-1 |" in table and "| base |" in table


def test_a_folder_that_is_not_a_trained_demo_run_is_named(demo_run, tmp_path):
    script = _script()
    with pytest.raises(FileNotFoundError, match="seed-1"):
        script.stage_folders(demo_run, 1)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        script.stage_folders(tmp_path, 0)
