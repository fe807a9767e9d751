"""The lmms-eval plugin: `lmms-eval --model finedefics` with the Finedefics tasks gives `finedefics eval`'s accuracy
and per-image predictions; its registration, FOCI tasks on local images, LoRA adapters, and bad input.

lmms-eval 0.7.3 is not in the test extra (see the skip reason), so these tests run where it is installed:
`pip install -e ".[lmms]"` (then `pip uninstall -y torchvision` beside the CPU torch wheel).
"""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

if importlib.util.find_spec("lmms_eval") is None:
    pytest.skip("lmms-eval 0.7.3 is not installed, so the lmms-eval plugin is not tested: it is not in the test "
                "extra because it requires torchvision, and PyPI's torchvision (a CUDA build) fails to import beside "
                "the CPU torch 2.13.0 that .ci/run installs and then breaks transformers' processors. To run these "
                "tests: pip install -e '.[lmms]' && pip uninstall -y torchvision", allow_module_level=True)

from conftest import TEST_CORPUS, TOY_CATEGORIES  # noqa: E402
from eval_helpers import small_synthetic_benchmark  # noqa: E402

from finedefics_cli import main  # noqa: E402
from finedefics_eval import lmms_eval_plugin as plugin  # noqa: E402

SEED = 3
RECORD_FIELDS = ("image", "predicted", "predicted_raw", "correct", "options")
TASKS = {"generate": "finedefics_data", "likelihood": "finedefics_data_likelihood"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return small_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "synth")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved micro Finedefics checkpoint (untrained: its answers are arbitrary, and so a strict comparison)."""
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    processor = build_tiny_processor(build_tiny_tokenizer(TEST_CORPUS + TOY_CATEGORIES))
    folder = tmp_path_factory.mktemp("micro") / "checkpoint"
    build_tiny_model(processor, preset="micro", seed=0).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def finedefics_eval(checkpoint, benchmark, output, modes=tuple(TASKS)) -> dict:
    """`finedefics eval` in ``modes``: ``{mode: (accuracy, records)}``."""
    assert main(["eval", "--model", str(checkpoint), "--benchmark", str(benchmark), "--mode", *modes,
                 "--output-dir", str(output), "--seed", str(SEED), "--device", "cpu", "--bootstrap-samples", "0",
                 "--no-plots", "--no-progress"]) == 0
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    return {mode: (report["modes"][mode]["accuracy"],
                   json.loads((output / f"predictions-{mode}.json").read_text(encoding="utf-8"))["predictions"])
            for mode in modes}


def lmms_eval_run(checkpoint, benchmark, monkeypatch, modes=tuple(TASKS)) -> dict:
    """lmms-eval with the plugin on the tasks of ``modes`` (``finedefics_data``, ``finedefics_data_likelihood``):
    ``{mode: (accuracy, records, samples)}`` and lmms-eval's ``configs``; skipped documents have no record."""
    monkeypatch.setenv("FINEDEFICS_BENCHMARK", str(benchmark))
    monkeypatch.setenv("FINEDEFICS_SEED", str(SEED))
    results = plugin.evaluate(str(checkpoint), [TASKS[mode] for mode in modes], batch_size=8, device="cpu")
    found = {"configs": results["configs"],
             "skipped_images": results["results"][TASKS[modes[0]]]["skipped_images,none"]}
    for mode in modes:
        samples = sorted(results["samples"][TASKS[mode]], key=lambda sample: sample["doc_id"])
        records = [sample["accuracy"] for sample in samples if "accuracy" in sample]
        found[mode] = (results["results"][TASKS[mode]]["accuracy,none"], records, samples)
    return found


def same_records(ours: list[dict], theirs: list[dict]) -> bool:
    return [{k: r[k] for k in RECORD_FIELDS} for r in ours] == [{k: r[k] for k in RECORD_FIELDS} for r in theirs]


# ----------------------------------------------------------------------------- acceptance
def test_lmms_eval_gives_finedefics_evals_accuracy_and_predictions(checkpoint, synthetic, tmp_path, monkeypatch):
    """The synthetic benchmark, the same checkpoint, seed (option order) and batch size: the same accuracy and the
    same FOCI prediction record for every image, by generation and by letter likelihood."""
    reference = finedefics_eval(checkpoint, synthetic, tmp_path / "finedefics-eval")
    ours = lmms_eval_run(checkpoint, synthetic, monkeypatch)
    for mode in TASKS:
        accuracy, records = reference[mode]
        assert len(records) == 12
        assert ours[mode][0] == pytest.approx(accuracy, abs=1e-12), mode
        assert same_records(ours[mode][1], records), mode
    # The untrained model's answers are not all alike: the comparison is not of constants.
    assert len({record["predicted"] for record in reference["likelihood"][1]}) > 1
    assert len({record["predicted_raw"] for record in reference["generate"][1]}) > 1
    # The prompt lmms-eval sent is finedefics eval's (the seeded option order included), and a likelihood
    # request's is_greedy marks at most the best option.
    assert ours["generate"][2][0]["arguments"][0].startswith("Which of these birds is shown in the image?")
    for sample in ours["likelihood"][2]:
        values = [plugin.likelihood_value(response[0]) for response in sample["resps"]]
        greedy = ["True" in str(response[0]) for response in sample["resps"]]
        assert sum(greedy) <= 1 and (not any(greedy) or values.index(min(values)) == greedy.index(True))


def test_missing_and_unreadable_images_are_skipped_as_finedefics_eval_skips_them(checkpoint, synthetic, tmp_path,
                                                                                  monkeypatch, caplog):
    benchmark = tmp_path / "synth"
    shutil.copytree(synthetic, benchmark)
    images = sorted((benchmark / "test").glob("*/*.png")) or sorted((benchmark / "test").rglob("*.png"))
    images[0].unlink()  # missing
    images[1].write_bytes(b"not a png")  # unreadable
    reference = finedefics_eval(checkpoint, benchmark, tmp_path / "finedefics-eval", modes=["likelihood"])
    ours = lmms_eval_run(checkpoint, benchmark, monkeypatch, modes=["likelihood"])
    assert len(reference["likelihood"][1]) == len(ours["likelihood"][1]) == 10
    assert ours["likelihood"][0] == pytest.approx(reference["likelihood"][0], abs=1e-12)
    assert same_records(ours["likelihood"][1], reference["likelihood"][1])
    assert any(r.name == plugin.__name__ and "1 of 12 images are missing" in r.getMessage() for r in caplog.records)
    metadata = ours["configs"]["finedefics_data_likelihood"]["metadata"]
    assert (metadata["num_examples"], metadata["missing_images"]) == (12, 1)
    assert ours["skipped_images"] == 2  # as finedefics eval's report counts them


# ----------------------------------------------------------------------------- registration and tasks
def test_finedefics_is_an_lmms_eval_model_by_its_entry_point():
    from importlib.metadata import entry_points

    from lmms_eval.api.model import lmms
    from lmms_eval.models import get_model

    (entry,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "finedefics"]
    assert entry.value == "finedefics_eval.lmms_eval_plugin:model_manifest"
    assert get_model("finedefics") is plugin.Finedefics and issubclass(plugin.Finedefics, lmms)


def test_the_shipped_task_folder_holds_the_foci_and_data_tasks():
    names = plugin.task_names()
    foci = ["aircraft-102", "bird-200", "car-196", "dog-120", "flower-102", "pet-37"]
    assert {f"finedefics_foci_{name}" for name in foci} <= set(names)
    assert {f"finedefics_foci_{name}_likelihood" for name in foci} <= set(names)
    assert {"finedefics_data", "finedefics_data_likelihood", "finedefics_foci", "finedefics_foci_likelihood"} \
        <= set(names)
    assert set(plugin.task_manager().all_tasks) == set(names)
    # What the documented command gives --include_path.
    printed = subprocess.run([sys.executable, "-m", "finedefics_eval.lmms_eval_plugin"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == str(plugin.TASK_FOLDER) and plugin.TASK_FOLDER.is_dir()


def test_a_foci_task_reads_local_images_with_finedefics_evals_prompts(tmp_path, monkeypatch):
    """FOCI's pet-37 from a local image folder holding two of its images: the rest are skipped as missing, and
    the two documents are finedefics eval's examples (option order, prompt) for the same seed."""
    from PIL import Image

    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.scoring import prepare_examples

    full = load_benchmark("foci:pet-37", image_root=tmp_path, max_per_label=1)
    kept = full.examples[:2]
    for example in kept:
        (tmp_path / "pet-37" / example.image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), "red").save(tmp_path / "pet-37" / example.image)
    monkeypatch.setenv("FINEDEFICS_IMAGE_ROOT", str(tmp_path))  # holds pet-37/, as --image-root with several
    monkeypatch.setenv("FINEDEFICS_MAX_PER_LABEL", "1")
    monkeypatch.setenv("FINEDEFICS_SEED", str(SEED))
    task = plugin.task_manager().load_task_or_group(["finedefics_foci_pet-37"])["finedefics_foci_pet-37"]
    docs = list(task.dataset["test"])
    expected = prepare_examples(kept, full.query, SEED)
    assert [(d["image"], d["options"], d["prompt"]) for d in docs] == \
        [(e.example.image, e.shown_options, e.prompt) for e in expected]
    assert task.config.metadata["missing_images"] == len(full.examples) - 2
    assert task.doc_to_visual(docs[0])[0].size == (64, 64)


def test_a_lora_adapter_folder_loads_merged(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from modeling_finedefics.families import FAMILIES

    family = FAMILIES["llava"]
    base, processor = family.build_tiny(TEST_CORPUS, seed=0)
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    adapted = get_peft_model(family.model.from_pretrained(tmp_path / "base"),
                             LoraConfig(r=4, target_modules=family.lora_targets, init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    merged = adapted.merge_and_unload().state_dict()
    model, _ = plugin.load_checkpoint(str(tmp_path / "adapter"), device="cpu")
    loaded = model.state_dict()
    changed = [name for name, tensor in merged.items() if not torch.equal(tensor, base.state_dict()[name])]
    assert changed and all(torch.allclose(loaded[name], merged[name], atol=1e-6) for name in changed)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, message", [
    (lambda folder: None, "does not exist"),
    (lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{not json")), "is not valid JSON"),
])
def test_a_checkpoint_that_cannot_load_is_a_clear_error(tmp_path, make, message):
    folder = tmp_path / "checkpoint"
    make(folder)
    with pytest.raises(plugin.CheckpointLoadError, match=f"cannot load the checkpoint '{folder}': .*{message}"):
        plugin.Finedefics(pretrained=str(folder), device="cpu")
    with pytest.raises(plugin.CheckpointLoadError, match="pretrained=PATH"):
        plugin.Finedefics(device="cpu")


def test_unknown_model_arguments_and_batch_sizes_are_clear_errors(checkpoint):
    with pytest.raises(ValueError, match=r"unknown model_args \['temprature'\]"):
        plugin.Finedefics(pretrained=str(checkpoint), temprature=0)
    with pytest.raises(ValueError, match="--batch_size must be a whole number, got 'auto'"):
        plugin.Finedefics(pretrained=str(checkpoint), batch_size="auto")


def test_an_unknown_task_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Finedefics task 'finedefics_foci_bird-201': did you mean "
                                         "'finedefics_foci_bird-200'.*--include_path"):
        plugin.check_task_names("finedefics_foci_bird-201,mme")
    assert plugin.check_task_names("finedefics_data,mme") == ["finedefics_data", "mme"]
    assert "finedefics_foci_bird-201" not in plugin.task_manager().match_tasks(["finedefics_foci_bird-201"])


def test_a_task_without_its_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FINEDEFICS_BENCHMARK", raising=False)
    monkeypatch.delenv("FINEDEFICS_IMAGE_ROOT", raising=False)
    manager = plugin.task_manager()
    with pytest.raises(ValueError, match="evaluates the benchmark named by FINEDEFICS_BENCHMARK"):
        manager.load_task_or_group(["finedefics_data"])
    with pytest.raises(ValueError, match="reads its images from FINEDEFICS_IMAGE_ROOT"):
        manager.load_task_or_group(["finedefics_foci_bird-200"])
    monkeypatch.setenv("FINEDEFICS_IMAGE_ROOT", str(tmp_path))  # an empty folder: every image is missing
    with pytest.raises(ValueError, match="none of its .* images exist under"):
        manager.load_task_or_group(["finedefics_foci_bird-200"])
    monkeypatch.setenv("FINEDEFICS_BENCHMARK", "bird-201")
    with pytest.raises(ValueError, match="did you mean 'bird-200'"):
        manager.load_task_or_group(["finedefics_data"])


def test_a_broken_torchvision_is_named_with_its_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(RuntimeError, match="pip uninstall torchvision"):
        plugin.check_torchvision()
