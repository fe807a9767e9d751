"""`finedefics export CKPT --stock OUT`, for every family: the stock checkpoint loads into the stock transformers class
without remote code (in a process that never imports Finedefics), gives the Finedefics checkpoint's logits and greedy
tokens, and lists everything it left out; a LoRA adapter folder is merged first; bad input is one line, exit 2."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_finedefics  # noqa: F401  (registers the Finedefics Auto classes, as a user's process would have)
from finedefics_cli import main
from modeling_finedefics.families import FAMILIES, alignment_config_fields

FAMILY_NAMES = list(FAMILIES)
CORPUS = ["a small bird with a red crown, a short conical beak and barred brown wings",
          "Velmoran Thistlewing", "Which of these birds is shown in the image?"]
EMBED_DIM = 16  # projection heads present, so the export must leave them out and say so
ALIGNMENT_PARAMETERS = {"temperatures.object_attribute", "temperatures.attribute_category",
                        "image_projection.weight", "text_projection.weight"}
# The stock Qwen and SmolVLM processors build a video processor (torchvision) and SmolVLM's needs num2words,
# neither installed here; their prompts and pixels are then made by the Finedefics processor class reading OUT's
# files (the same tokenizer, image processor and chat template).
VIDEO_DEPENDENCIES = ("torchvision", "num2words")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``family name -> (Finedefics checkpoint folder, stock export folder)``, each built on first use."""
    folders = {}

    def export(family):
        if family not in folders:
            root = tmp_path_factory.mktemp(f"export-{family}")
            model, processor = FAMILIES[family].build_tiny(CORPUS, seed=0, embed_dim=EMBED_DIM, object_noun="bird")
            _randomise_temperatures(model)
            model.save_pretrained(root / "finedefics")
            processor.save_pretrained(root / "finedefics")
            assert main(["export", str(root / "finedefics"), "--stock", str(root / "stock")]) == 0
            folders[family] = (root / "finedefics", root / "stock")
        return folders[family]

    return export


def _randomise_temperatures(model):
    """Trained-looking temperatures, so a loader that silently re-initialised them would not go unnoticed."""
    with torch.no_grad():
        model.temperatures.object_attribute.fill_(3.1)
        model.temperatures.attribute_category.fill_(2.2)


def _image():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _stock_or_equivalent_processor(family, folder):
    """The stock processor of ``folder`` (``AutoProcessor``, no remote code), or where its video dependencies are
    missing here, the Finedefics processor class reading the same files."""
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ImportError) as error:
        missing = [name for name in VIDEO_DEPENDENCIES if importlib.util.find_spec(name) is None]
        assert missing and ("video processor" in str(error) or "num2words" in str(error)), error
        return FAMILIES[family].processor.from_pretrained(folder)
    assert type(processor) is FAMILIES[family].stock_processor
    return processor


def _prompt_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Which of these birds is shown in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[_image()], text=[prompt], return_tensors="pt")


# ----------------------------------------------------------------------------- the folder
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_is_a_stock_checkpoint_with_no_remote_code(family, exported):
    source, out = exported(family)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == FAMILIES[family].stock_model_type
    assert config["architectures"] == [FAMILIES[family].stock_model.__name__]
    assert "auto_map" not in config
    assert not set(alignment_config_fields()) & set(config)
    assert not list(out.glob("*.py")) and not list(out.glob("*.bin"))
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["processor_class"] == FAMILIES[family].stock_processor.__name__
    assert "auto_map" not in json.dumps(processor_config) + (out / "tokenizer_config.json").read_text()
    assert (out / "chat_template.jinja").read_text() == (source / "chat_template.jinja").read_text()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_report_and_card_list_everything_left_out(family, exported):
    _, out = exported(family)
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["left_out_parameters"]) == ALIGNMENT_PARAMETERS
    assert report["left_out_settings"]["embed_dim"] == EMBED_DIM
    assert report["left_out_settings"]["object_noun"] == "bird"
    assert set(report["left_out_settings"]) == set(alignment_config_fields())
    card = (out / "README.md").read_text()
    assert "classify" in card and "embeddings" in card and "vllm serve" in card
    assert all(f"`{name}`" in card for name in ALIGNMENT_PARAMETERS)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stock_transformers_loads_the_export_in_a_process_without_finedefics(family, exported):
    """Only transformers is imported (no Finedefics module, so nothing is registered), offline, no remote code."""
    _, out = exported(family)
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoConfig, AutoModelForImageTextToText
        config = AutoConfig.from_pretrained({str(out)!r})
        model = AutoModelForImageTextToText.from_pretrained({str(out)!r})
        # the package's modules, and remote code transformers would have imported from the folder
        prefixes = ("modeling_finedefics", "finedefics_", "transformers_modules")
        finedefics = sorted(name for name in sys.modules if name.startswith(prefixes))
        print(json.dumps([config.model_type, type(model).__name__, type(model).__module__, finedefics]))
    """)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=out)
    assert result.returncode == 0, result.stderr[-2000:]
    model_type, class_name, module, finedefics = json.loads(result.stdout.strip().splitlines()[-1])
    assert (model_type, class_name) == (FAMILIES[family].stock_model_type, FAMILIES[family].stock_model.__name__)
    assert module.startswith("transformers.models.") and finedefics == []


# ----------------------------------------------------------------------------- same outputs
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_gives_the_finedefics_logits_and_greedy_tokens(family, exported):
    source, out = exported(family)
    finedefics = FAMILIES[family].model.from_pretrained(source, dtype=torch.float32).eval()
    stock = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert type(stock) is FAMILIES[family].stock_model
    inputs = _prompt_inputs(_stock_or_equivalent_processor(family, out))
    assert (inputs["input_ids"] == finedefics.config.image_token_id).any()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, finedefics(**inputs).logits, rtol=0, atol=1e-5)
        settings = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
        assert torch.equal(stock.generate(**inputs, **settings), finedefics.generate(**inputs, **settings))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_convert_of_the_export_gives_back_every_stock_tensor(family, exported, tmp_path):
    """Export is ``finedefics convert``'s inverse: converting the export back restores every tensor but the
    left-out alignment ones (the converter adds fresh temperatures)."""
    source, out = exported(family)
    assert main(["convert", str(out), str(tmp_path / "back")]) == 0
    original = FAMILIES[family].model.from_pretrained(source, dtype=torch.float32).state_dict()
    back = FAMILIES[family].model.from_pretrained(tmp_path / "back", dtype=torch.float32).state_dict()
    assert set(original) - set(back) == {"image_projection.weight", "text_projection.weight"}
    for name, tensor in back.items():
        if name not in ALIGNMENT_PARAMETERS:
            torch.testing.assert_close(tensor, original[name], rtol=0, atol=0, msg=name)


def test_lora_adapter_folder_is_merged_before_export(tmp_path):
    """An adapter folder exports the merged model: its logits, not the base's."""
    from peft import LoraConfig, get_peft_model

    family = FAMILIES["llava"]
    base, processor = family.build_tiny(CORPUS, seed=0)
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    base = family.model.from_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=family.lora_targets, init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    merged = adapted.merge_and_unload().eval()
    assert main(["export", str(tmp_path / "adapter"), "--stock", str(tmp_path / "stock")]) == 0

    report = json.loads((tmp_path / "stock" / "export_report.json").read_text())
    assert report["merged_adapter_base"] == str(tmp_path / "base")
    stock = AutoModelForImageTextToText.from_pretrained(tmp_path / "stock", dtype=torch.float32).eval()
    inputs = _prompt_inputs(AutoProcessor.from_pretrained(tmp_path / "stock"))
    fresh_base = family.model.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, merged(**inputs).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(stock(**inputs).logits, fresh_base(**inputs).logits, atol=1e-3)


def test_adapter_export_keeps_the_base_dtype(tmp_path):
    """A bfloat16 base's adapter is merged in float32 and exported in bfloat16, not doubled in size."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    family = FAMILIES["llava"]
    base, processor = family.build_tiny(CORPUS, seed=0)
    base.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    adapted = get_peft_model(family.model.from_pretrained(tmp_path / "base"),
                             LoraConfig(r=4, target_modules=family.lora_targets))
    adapted.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    assert main(["export", str(tmp_path / "adapter"), "--stock", str(tmp_path / "stock")]) == 0
    with safe_open(tmp_path / "stock" / "model.safetensors", framework="pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"BF16"}


# ----------------------------------------------------------------------------- bad input
def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # what earlier commands printed (progress bars) is not this one's error
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_export_refuses_what_is_not_a_finedefics_checkpoint(exported, tmp_path, capsys):
    _, out = exported("llava")
    assert "not a Finedefics checkpoint" in _one_line_error(capsys, ["export", str(out), "--stock",
                                                                      str(tmp_path / "again")])
    (tmp_path / "empty").mkdir()
    assert "config.json is missing" in _one_line_error(capsys, ["export", str(tmp_path / "empty"), "--stock",
                                                                 str(tmp_path / "x")])
    assert "does not exist" in _one_line_error(capsys, ["export", str(tmp_path / "nowhere"), "--stock",
                                                         str(tmp_path / "y")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "'bert'" in _one_line_error(capsys, ["export", str(tmp_path / "other"), "--stock", str(tmp_path / "z")])


def test_export_refuses_a_non_empty_output_unless_overwrite(exported, tmp_path, capsys):
    source, _ = exported("llava")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "stale-shard.safetensors").write_text("old")
    assert "not empty" in _one_line_error(capsys, ["export", str(source), "--stock", str(out)])
    assert (out / "stale-shard.safetensors").is_file()  # nothing touched
    assert main(["export", str(source), "--stock", str(out), "--overwrite"]) == 0
    assert not (out / "stale-shard.safetensors").exists()  # replaced, not mixed with the new export
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    assert "outside the checkpoint" in _one_line_error(capsys, ["export", str(source), "--stock",
                                                                 str(source / "stock"), "--overwrite"])


# ----------------------------------------------------------------------------- push --stock
def test_push_stock_uploads_the_export_to_its_own_repo_or_a_branch(exported, hub, tmp_path):
    from conftest import HUB_TOKEN

    source, out = exported("llava")
    assert main(["push", str(source), "--repo-id", "tester/bird-stock", "--stock", "--token", HUB_TOKEN]) == 0
    assert main(["push", str(source), "--repo-id", "tester/bird", "--stock", "--revision", "stock",
                 "--token", HUB_TOKEN]) == 0
    own_repo, branch = hub.commits
    assert (own_repo.revision, branch.revision) == ("main", "stock")
    for commit in (own_repo, branch):
        assert set(commit.files) == {path.name for path in out.iterdir()}  # exactly what the export writes
        assert json.loads(commit.files["config.json"])["model_type"] == "llava"
        assert commit.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert not list(source.parent.glob(".finedefics-push-*"))  # the temporary export is gone


def test_push_stock_refuses_the_finedefics_card_inputs(exported, hub, capsys):
    source, _ = exported("llava")
    error = _one_line_error(capsys, ["push", str(source), "--repo-id", "tester/x", "--stock", "--report", "r.json"])
    assert "--report" in error and hub.commits == []
