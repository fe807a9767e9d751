"""The plumbing around the model families, for every family: `finedefics init-model --family`, `finedefics push`
(staging the family's code files and auto_map, loading from a clean process, uploading to the fake Hub), recipes
starting from a stock checkpoint of the family, the family's LoRA targets, and the dry run of the family recipes."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import HUB_TOKEN

import modeling_finedefics  # noqa: F401  (registers the Auto classes; marks them so save_pretrained writes code)
from modeling_finedefics.families import FAMILIES

FAMILY_NAMES = list(FAMILIES)
RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
CORPUS = ["a small bird with a red crown, a short conical beak and barred brown wings",
          "Velmoran Thistlewing", "Ashcombe Reedhopper", "What is the species of the bird in the image?"]
TEMPERATURES = {"temperatures.object_attribute", "temperatures.attribute_category"}
RARE_NAME = "Zyxqorbantel"  # in the data only: a tokenizer trained on the data's texts knows it as a unit


def _tiny(family, stock=False, seed=0):
    """A tiny model of ``family`` (Finedefics classes, or the stock ones) and its processor."""
    if family == "idefics2" and stock:
        from transformers import Idefics2Config, Idefics2ForConditionalGeneration

        from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_config

        processor = build_tiny_processor(build_tiny_tokenizer(CORPUS))
        config = tiny_config(processor, "micro").to_dict()
        for key in ("embed_dim", "init_temperature", "min_temperature", "max_temperature", "summary_token_id",
                    "object_noun", "object_noun_plural", "model_type", "auto_map", "architectures"):
            config.pop(key, None)
        torch.manual_seed(seed)
        return Idefics2ForConditionalGeneration(Idefics2Config(**config)).eval(), processor
    return FAMILIES[family].build_tiny(CORPUS, seed=seed, stock=stock)


def _save(model, processor, folder):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _training_args(tmp_path, **overrides):
    from finedefics_training.config import FinedeficsTrainingConfig

    return FinedeficsTrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], **overrides)


def test_cli_family_choices_are_the_registry():
    from finedefics_cli import build_parser

    init_parser = build_parser()._subparsers._group_actions[0].choices["init-model"]
    family_action = next(action for action in init_parser._actions if action.dest == "family")
    assert list(family_action.choices) == FAMILY_NAMES
    assert "not-a-family" not in family_action.choices


# ----------------------------------------------------------------------------- init-model
@pytest.fixture(scope="module")
def rare_data(tmp_path_factory):
    """A `save_to_disk` training split whose category names hold a word no built-in corpus has."""
    from datasets import Dataset, DatasetDict
    from PIL import Image

    rows = [{"image": Image.new("RGB", (32, 32), colour), "category": f"{RARE_NAME} {kind}",
             "attribute": f"a {colour} bird with a {RARE_NAME} crest", "neg_categories": [f"{RARE_NAME} Finch"],
             "neg_attributes": ["a plain bird"]}
            for colour, kind in (("red", "Warbler"), ("blue", "Tit"), ("green", "Wren"))]
    folder = tmp_path_factory.mktemp("data") / "rare"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_init_model_writes_a_loadable_checkpoint_of_the_family(family, rare_data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finedefics_cli import main

    output = tmp_path / "init"
    assert main(["init-model", "--family", family, "--corpus", str(rare_data), "--noun", "bird",
                 *(["--preset", "micro"] if family == "idefics2" else []), str(output)]) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == FAMILIES[family].model_type
    assert config["object_noun"] == "bird"
    model = AutoModelForImageTextToText.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert type(model) is FAMILIES[family].model and type(processor) is FAMILIES[family].processor
    # The tokenizer was trained on the data's texts: the data's rare word is one or two tokens, not its letters.
    assert len(processor.tokenizer.tokenize(RARE_NAME)) <= 2
    assert model.config.summary_token_id == processor.tokenizer.eos_token_id is not None
    assert model.get_input_embeddings().weight.shape[0] >= len(processor.tokenizer)


def test_init_model_refuses_idefics2_only_settings_for_other_families(rare_data, tmp_path):
    from finedefics_training.init_model import init_model

    with pytest.raises(ValueError, match="qwen2_vl.*preset, image_size.*idefics2 family only"):
        init_model([rare_data], tmp_path / "out", family="qwen2_vl", preset="tiny", image_size=96)
    with pytest.raises(ValueError, match="unknown model family 'qwen3'"):
        init_model([rare_data], tmp_path / "out", family="qwen3")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- push
REMOTE_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_finedefics"] = None  # the repository's package must not be what loads
    import json, torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    results = {}
    for folder in sys.argv[2:]:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        texts = processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
        with torch.no_grad():
            embeds = model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
        reference = load_file(folder + "/../" + folder.rsplit("/", 1)[1] + ".reference.safetensors")
        results[folder] = {"modules": [type(x).__module__ for x in (config, model, processor)],
                           "classes": [type(x).__name__ for x in (config, model, processor)],
                           "embeddings_match": bool(torch.allclose(embeds, reference["text_embeds"], atol=1e-5)),
                           "ids_match": bool(torch.equal(texts["input_ids"], reference["text_ids"]))}
    with open(sys.argv[1], "w") as handle:
        json.dump(results, handle)
    """
)


@pytest.fixture(scope="module")
def staged_families(tmp_path_factory):
    """Every family's tiny checkpoint, WITHOUT its code files and auto_map (so both must come from the family),
    staged for the Hub; then one clean process (HF_HUB_OFFLINE, cwd and PYTHONPATH outside the repository, the
    repository's package blocked) loads each staged folder with trust_remote_code."""
    from safetensors.torch import save_file

    from finedefics_training.push import stage_for_hub

    root = tmp_path_factory.mktemp("push")
    staged = {}
    for family in FAMILY_NAMES:
        model, processor = _tiny(family, seed=3)
        checkpoint = _save(model, processor, root / "checkpoints" / family)
        for code in checkpoint.glob("*.py"):
            code.unlink()
        for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
            if (checkpoint / name).is_file():
                values = json.loads((checkpoint / name).read_text())
                values.pop("auto_map", None)
                (checkpoint / name).write_text(json.dumps(values))
        staged[family] = stage_for_hub(checkpoint, root / "staged" / family, validate=True,
                                       recipe=f"model_name_or_path: tiny/{family}\ntuning: lora\n")
        texts = processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
        with torch.no_grad():
            embeds = model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
        save_file({"text_embeds": embeds.contiguous(), "text_ids": texts["input_ids"].contiguous()},
                  root / "staged" / f"{family}.reference.safetensors")
    script = root / "load.py"
    script.write_text(REMOTE_LOAD_SCRIPT)
    run_dir = root / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, str(script), str(root / "results.json"),
                             *(str(folder) for folder in staged.values())],
                            capture_output=True, text=True, cwd=run_dir, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((root / "results.json").read_text())
    return staged, {family: results[str(folder)] for family, folder in staged.items()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_push_stages_the_family_code_files_and_auto_map(family, staged_families):
    from finedefics_training.convert import model_code_files
    from finedefics_training.push import staged_files

    staged = staged_families[0][family]
    spec = FAMILIES[family]
    code_files = {name for name in staged_files(staged) if name.endswith(".py")}
    assert code_files == set(model_code_files(spec))
    expected_code = {"configuration_finedefics.py", "processing_finedefics.py", "alignment.py",
                     f"{spec.code_module}.py"}
    if family != "idefics2":
        expected_code |= {"multimodal.py"}
    assert code_files == expected_code
    package = Path(modeling_finedefics.__file__).parent
    for name in code_files:
        assert (staged / name).read_bytes() == (package / name).read_bytes(), name
    config = json.loads((staged / "config.json").read_text())
    module = "modeling_finedefics" if family == "idefics2" else spec.code_module
    config_module = "configuration_finedefics" if family == "idefics2" else spec.code_module
    assert config["model_type"] == spec.model_type
    assert config["auto_map"] == {"AutoConfig": f"{config_module}.{spec.config.__name__}",
                                  "AutoModelForImageTextToText": f"{module}.{spec.model.__name__}"}
    processor_module = "processing_finedefics" if family == "idefics2" else spec.code_module
    processor_config = json.loads((staged / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": f"{processor_module}.{spec.processor.__name__}"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_staged_folder_loads_with_remote_code_in_a_clean_process(family, staged_families):
    loaded = staged_families[1][family]
    spec = FAMILIES[family]
    assert all(name.startswith("transformers_modules.") for name in loaded["modules"]), loaded
    assert loaded["classes"] == [spec.config.__name__, spec.model.__name__, spec.processor.__name__]
    assert loaded["ids_match"] and loaded["embeddings_match"], loaded


def test_push_refuses_a_stock_checkpoint_of_another_family(tmp_path):
    from finedefics_training.push import stage_for_hub

    stock = _save(*_tiny("llava", stock=True), tmp_path / "stock")
    with pytest.raises(ValueError, match="model_type 'llava', not a Finedefics one.*finedefics convert"):
        stage_for_hub(stock, tmp_path / "staged")


def test_push_uploads_every_family_staged_folder_to_the_fake_hub(staged_families, hub):
    from finedefics_training.push import push_to_hub, staged_files

    for family, staged in staged_families[0].items():
        push_to_hub(staged, f"tester/finedefics-{family.replace('_', '-')}", token=HUB_TOKEN)
    assert len(hub.commits) == len(FAMILY_NAMES)
    for commit, (family, staged) in zip(hub.commits, staged_families[0].items()):
        assert set(commit.files) == set(staged_files(staged)), family
        assert commit.files[f"{FAMILIES[family].code_module}.py"] == (
            staged / f"{FAMILIES[family].code_module}.py").read_bytes()


# ----------------------------------------------------------------------------- recipes
def _decoder_prefix(model) -> str:
    decoder = model._decoder()
    return next(name for name, module in model.named_modules() if module is decoder) + "."


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_recipe_from_a_stock_checkpoint_resolves_to_the_family_finedefics_class(family, tmp_path):
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    stock, processor = _tiny(family, stock=True)
    folder = _save(stock, processor, tmp_path / "stock")
    assert json.loads((folder / "config.json").read_text())["model_type"] == FAMILIES[family].stock_model_type
    model, loaded_processor = load_model_and_processor(
        ModelArguments(model_name_or_path=str(folder), tuning="lora", torch_dtype="float32"), _training_args(tmp_path))
    base = model.get_base_model()
    assert type(base) is FAMILIES[family].model
    assert type(loaded_processor) is FAMILIES[family].processor
    assert type(base.config) is FAMILIES[family].config
    assert base.config.summary_token_id == loaded_processor.tokenizer.eos_token_id
    stock_weights = stock.state_dict()
    for name, tensor in base.state_dict().items():  # stock weights kept (LoRA's base layers), temperatures fresh
        if "lora_" in name or name.startswith("temperatures."):
            continue
        stock_name = name.replace(".base_layer", "")
        torch.testing.assert_close(tensor, stock_weights[stock_name], rtol=0, atol=0, msg=name)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "temperatures" in name for name in trainable)
    vision = base._vision_tower()
    assert not any(p.requires_grad for p in vision.parameters())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_full_tuning_of_a_stock_checkpoint_freezes_only_the_family_vision_tower(family, tmp_path):
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    folder = _save(*_tiny(family, stock=True), tmp_path / "stock")
    model, _ = load_model_and_processor(
        ModelArguments(model_name_or_path=str(folder), tuning="full", torch_dtype="float32"), _training_args(tmp_path))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    tower = {name for name, module in model.named_modules() if module is model._vision_tower()}.pop()
    assert frozen and all(name.startswith(tower + ".") for name in frozen)
    assert {name for name, _ in model._vision_tower().named_parameters()} == {n[len(tower) + 1:] for n in frozen}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_targets_are_the_family_decoder_projections(family):
    model, _ = _tiny(family)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(FAMILIES[family].lora_targets, name)]
    assert matched, f"{family}: the LoRA targets match no module"
    assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in matched)
    tower = {name for name, module in model.named_modules() if module is model._vision_tower()}.pop()
    assert not [name for name in matched if name.startswith(tower + ".")]
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    decoder = _decoder_prefix(model)
    if family == "idefics2":  # the paper's targets: decoder and connector (perceiver, modality projection)
        assert {name.split(".")[1] for name in matched} == {"text_model", "connector"}
    else:  # the decoder only: every attention / MLP projection of every layer, nothing else
        layers = model._decoder().config.num_hidden_layers
        assert all(name.startswith(decoder) for name in matched)
        assert len(matched) == layers * len(projections)
    assert {name.rsplit(".", 1)[1] for name in matched} == projections


# ----------------------------------------------------------------------------- dry run
NEW_RECIPES = {
    "smolvlm-instruct-full.yaml": ("idefics3", 2.2e9, 2.3e9),  # SmolVLM-Instruct's config says idefics3
    "smolvlm-instruct-lora.yaml": ("idefics3", 2.2e9, 2.3e9),
    "qwen2.5-vl-7b-lora.yaml": ("qwen2_5_vl", 8.2e9, 8.4e9),
    "qwen2.5-vl-7b-qlora.yaml": ("qwen2_5_vl", 8.2e9, 8.4e9),
    "llava-1.5-7b-qlora.yaml": ("llava", 7.0e9, 7.1e9),
}


@pytest.mark.parametrize("recipe", list(NEW_RECIPES))
def test_dry_run_of_each_family_recipe_trains_something_outside_the_vision_tower(recipe, tmp_path, capsys,
                                                                                  monkeypatch):
    import yaml

    from finedefics_cli import main
    from finedefics_training.dry_run import plan_config

    monkeypatch.chdir(tmp_path)
    values = yaml.safe_load((RECIPES / recipe).read_text())
    family, low, high = NEW_RECIPES[recipe]
    config, _ = plan_config(values["model_name_or_path"])
    assert config.model_type == FAMILIES[family].model_type
    assert main(["train", "--config", str(RECIPES / recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"dry run, stage 1: {values['model_name_or_path']} ({values['tuning']}, bfloat16)" in out
    table = {match[0].strip(): (int(match[1].replace(",", "")), int(match[2].replace(",", "")))
             for match in re.findall(r"^  ([a-z_ (),]+?)\s+([\d,]+) /\s+([\d,]+)$", out, re.M)}
    assert low <= sum(total for _, total in table.values()) <= high, table  # the published size
    assert table["vision tower"][0] == 0 and table.get("multimodal projector", (0, 0))[0] == 0
    assert table["decoder"][0] > 0
    assert sum(trainable for trainable, _ in table.values()) > 0
    if values["tuning"] != "full":
        decoder = "text_model" if family == "idefics3" else "language_model"
        lora = re.findall(r"^\s+(\d+) x (\S+)$", out, re.M)
        layers = config.text_config.num_hidden_layers
        assert len(lora) == 7 and all(int(n) == layers and p.startswith(f"model.{decoder}.layers.") for n, p in lora)
    assert re.search(r"total\s+\d+\.\d+\nfits on: 24 GB (yes|NO), 40 GB (yes|NO), 80 GB (yes|NO)", out)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("stock", [False, True], ids=["finedefics", "stock"])
def test_dry_run_of_a_local_checkpoint_of_every_family(stock, tmp_path):
    """Local (tiny) Finedefics and stock checkpoints of each family plan too, with the family's image tokens."""
    from finedefics_training.dry_run import config_family, plan_config, plan_stage
    from finedefics_training.recipe import ModelArguments

    for family in FAMILY_NAMES:
        folder = _save(*_tiny(family, stock=stock), tmp_path / family)
        assert config_family(plan_config(str(folder))[0]) is FAMILIES[family]
        plan = plan_stage(ModelArguments(model_name_or_path=str(folder), tuning="lora", torch_dtype="float32"),
                          _training_args(tmp_path, stage=1, per_device_train_batch_size=2))
        assert plan.parameters["vision tower"][1] == 0, family
        assert plan.parameters["decoder"][1] > 0 and plan.total_gib > 0, family
        assert plan.shape.image_tokens > 0 and plan.shape.patches > 0, family
        shutil.rmtree(folder)


LOAD_MERGED = textwrap.dedent(
    """
    import sys
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    print("TYPE", model.config.model_type)
    """
)


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if name != "idefics2"])
def test_two_stage_lora_trains_merges_and_reloads_every_family(family, tmp_path, toy_dataset_dir):
    """`finedefics two-stage` with LoRA on a tiny model of the family: each stage's adapter is merged into a
    plain checkpoint of the family (no LoRA keys) whose decoder projections moved, loadable as remote code."""
    import yaml
    from safetensors.torch import load_file

    from finedefics_cli import main

    model, processor = _tiny(family)
    base = _save(model, processor, tmp_path / "base")
    recipe = tmp_path / "two-stage.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(base), dataset_dir=str(toy_dataset_dir), output_dir=str(tmp_path / "run"),
        tuning="lora", max_steps=2, stage2_max_steps=2, per_device_train_batch_size=4, learning_rate=5e-2,
        num_negatives=2, save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, torch_dtype="float32")))
    assert main(["two-stage", "--config", str(recipe)]) == 0
    before = load_file(base / "model.safetensors")
    for stage in ("stage1", "stage2"):
        final = tmp_path / "run" / stage / "final"
        weights = load_file(final / "model.safetensors")
        assert not any("lora_" in key or "modules_to_save" in key or "base_layer" in key for key in weights)
        assert set(weights) == set(before)
        projections = [key for key in before if re.search(r"layers\.\d+\.self_attn\.q_proj\.weight$", key)
                       and "visual" not in key and "vision" not in key]
        assert projections and any(not torch.equal(weights[key], before[key]) for key in projections)
        loaded = subprocess.run([sys.executable, "-c", LOAD_MERGED, str(final)], capture_output=True, text=True,
                                cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert f"TYPE finedefics_{family}" in loaded.stdout
