"""What breaks only at real scale, checked on tiny models: 16-bit training of the alignment parameters,
the frozen vision tower, and the plan a dry run prints."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from test_convert import stock_idefics2  # noqa: F401 (fixture)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ALIGNMENT_MODULES = ("temperatures", "image_projection", "text_projection")


@pytest.fixture
def micro_checkpoint_with_heads(tmp_path, tiny_processor):
    """A saved micro checkpoint with projection heads (embed_dim > 0)."""
    from modeling_finedefics.tiny import build_tiny_model

    model = build_tiny_model(tiny_processor, preset="micro", seed=0)
    model.config.embed_dim = 32
    model = type(model)(model.config)
    folder = tmp_path / "micro-heads"
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


def _alignment_parameters(model):
    return {name: p for name, p in model.named_parameters() if any(m in name for m in ALIGNMENT_MODULES)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_alignment_parameters_stay_float32_in_a_16_bit_model(micro_checkpoint_with_heads, dtype):
    """At a log scale of ~2.66 a bf16 step is 0.0156: updates of ~2e-4 would round away."""
    from modeling_finedefics import FinedeficsForConditionalGeneration

    model = FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint_with_heads, dtype=dtype)
    parameters = _alignment_parameters(model)
    assert {name.split(".")[0] for name in parameters} == set(ALIGNMENT_MODULES)
    assert {p.dtype for p in parameters.values()} == {torch.float32}
    assert model.model.text_model.embed_tokens.weight.dtype == dtype

    log_scale = model.temperatures.object_attribute
    before = log_scale.detach().clone()
    optimizer = torch.optim.SGD([log_scale], lr=2e-4)
    model.get_logit_scales()["object_attribute"].backward()
    optimizer.step()
    assert log_scale.detach() != before, "a 2e-4 step on the logit scale was rounded away"


def test_a_16_bit_model_embeds_with_float32_heads(micro_checkpoint_with_heads, tiny_processor):
    from modeling_finedefics import FinedeficsForConditionalGeneration

    model = FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint_with_heads, dtype=torch.bfloat16)
    texts = tiny_processor.tokenize_texts(["a small bird with a red crown", "Velmoran Thistlewing"])
    embeds = model.get_text_embeddings(texts["input_ids"], texts["attention_mask"])
    assert embeds.shape == (2, 32)
    assert torch.isfinite(embeds.float()).all()
    assert torch.allclose(embeds.float().norm(dim=-1), torch.ones(2), atol=1e-2)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_recipe_keeps_alignment_parameters_float32_under_bf16(micro_checkpoint_with_heads, tuning):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    model_args = ModelArguments(model_name_or_path=str(micro_checkpoint_with_heads), tuning=tuning,
                                torch_dtype="bfloat16")
    training_args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    model, _ = load_model_and_processor(model_args, training_args)
    trainable = {name: p for name, p in _alignment_parameters(model).items() if p.requires_grad}
    assert trainable, "the alignment parameters are not trained"
    assert {p.dtype for p in trainable.values()} == {torch.float32}


def test_a_stock_idefics2_loaded_in_bf16_gets_float32_temperatures_at_their_initial_value(stock_idefics2):  # noqa: F811
    """The alignment parameters a stock checkpoint lacks are created fresh: in float32 too, at init_temperature."""
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    folder, _ = stock_idefics2
    model_args = ModelArguments(model_name_or_path=str(folder), tuning="full", torch_dtype="bfloat16")
    model, _ = load_model_and_processor(model_args,
                                        FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False))
    assert model.temperatures.object_attribute.dtype == torch.float32
    expected = 1.0 / model.config.init_temperature
    assert model.get_logit_scales()["object_attribute"].item() == pytest.approx(expected, rel=1e-6)


def test_lora_trains_only_the_adapters_copy_of_the_temperatures(micro_checkpoint, toy_dataset_dir):
    """PEFT keeps an unused ``original_module`` beside the trained ``modules_to_save`` copy: it stays frozen."""
    from datasets import load_from_disk

    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor
    from finedefics_training.trainer import FinedeficsTrainer

    args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[], stage=1,
                                    init_temperature=0.05)
    model, processor = load_model_and_processor(ModelArguments(model_name_or_path=str(micro_checkpoint)), args)
    FinedeficsTrainer(model=model, args=args, train_dataset=load_from_disk(str(toy_dataset_dir))["train"],
                      processing_class=processor)
    temperatures = {name: p for name, p in model.named_parameters() if "temperatures." in name}
    trained = {name for name, p in temperatures.items() if p.requires_grad}
    assert trained and all(".modules_to_save." in name for name in trained), sorted(temperatures)
    assert len(trained) == 2
    assert model.get_base_model().get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.05, rel=1e-5)


def _vision_output_requires_grad(model, tiny_processor) -> bool:
    """Whether the vision tower's output is part of the autograd graph in a training forward."""
    from PIL import Image

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen = []
    hook = core.model.vision_model.register_forward_hook(
        lambda m, i, out: seen.append(out.last_hidden_state.requires_grad))
    inputs = tiny_processor(images=[[Image.new("RGB", (64, 64), "red")]], text=["<image>a red bird"],
                            return_tensors="pt")
    try:
        model.train()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_a_frozen_vision_tower_builds_no_autograd_graph(micro_checkpoint, tiny_processor, tuning):
    """Trainers call ``enable_input_require_grads`` (PEFT, checkpointing); transformers' version also hooks
    the vision embeddings, so a frozen tower kept its activations and was back-propagated for nothing."""
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    model, _ = load_model_and_processor(ModelArguments(model_name_or_path=str(micro_checkpoint), tuning=tuning), args)
    model.enable_input_require_grads()
    assert not _vision_output_requires_grad(model, tiny_processor)
    text_model_grads = [p.grad for name, p in model.named_parameters() if p.requires_grad and "text_model" in name]
    assert any(g is not None and g.abs().sum() > 0 for g in text_model_grads), "the decoder no longer learns"


def test_a_trained_vision_tower_still_gets_gradients(micro_checkpoint, tiny_processor):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    model_args = ModelArguments(model_name_or_path=str(micro_checkpoint), tuning="full", freeze_vision_tower=False)
    model, _ = load_model_and_processor(model_args, args)
    model.enable_input_require_grads()
    assert _vision_output_requires_grad(model, tiny_processor)
    first_layer = model.model.vision_model.encoder.layers[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_layer.parameters())


# ----------------------------------------------------------------------------- dry run
def test_dry_run_plans_the_8b_recipe_without_weights_and_trains_nothing(tmp_path, capsys, monkeypatch):
    """The shipped Idefics2-8B config, the recipe's QLoRA: the LoRA regex's 248 modules, no vision module."""
    from finedefics_cli import main

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "training" / "recipes" / "idefics2-8b-stage1.yaml"
    assert main(["train", "--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, stage 1: HuggingFaceM4/idefics2-8b (qlora, bfloat16)" in out
    assert "LoRA on 248 modules:" in out
    assert "32 x model.text_model.layers.*.self_attn.q_proj" in out and "vision_model" not in out
    totals = {line.split()[0]: line for line in out.splitlines() if "/" in line and line.startswith("  ")}
    assert totals["vision"].split()[-3] == "0"  # the vision tower trains nothing
    assert re.search(r"fits on: 24 GB (yes|NO), 40 GB (yes|NO), 80 GB (yes|NO)", out)
    assert not (tmp_path / "runs").exists()


def test_dry_run_estimate_against_a_measured_step_on_a_tiny_model():
    """Weights, gradients and optimizer state are counted exactly; activations within a stated band."""
    spec = importlib.util.spec_from_file_location("bench_dry_run", BENCHMARKS / "bench_dry_run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--preset", "micro", "--batch-size", "6", "--tuning", "full", "--threads", "1"])
    for name in ("weights", "gradients", "optimizer state"):
        assert result["estimated"][name] == pytest.approx(result["measured"][name], rel=1e-6), name
    ratio = result["estimated"]["activations"] / result["measured"]["activations"]
    assert 0.9 <= ratio <= 1.5, result["markdown"]


# ----------------------------------------------------------------------------- connector checkpointing
def _connector_step(model, features, mask):
    """Saved bytes and the connector's parameter gradients for one forward + backward of the connector."""
    from finedefics_training.dry_run import SavedTensorCounter

    connector = model.model.connector
    model.zero_grad(set_to_none=True)
    with SavedTensorCounter(model.parameters()) as counter:
        out = connector(features, attention_mask=mask)
    out.float().pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in connector.named_parameters()}
    return counter.bytes, out.detach(), grads


def test_under_activation_checkpointing_the_connector_keeps_one_chunk_at_a_time(tiny_processor, monkeypatch):
    """The modality projection and perceiver ran over every padded patch of up to 5 sub-images per row and
    kept it all for backward; checkpointed in chunks they keep their inputs and recompute one at a time."""
    from modeling_finedefics.modeling_finedefics import FinedeficsConnector
    from modeling_finedefics.tiny import build_tiny_model

    monkeypatch.setattr(FinedeficsConnector, "checkpoint_patch_budget", 49)  # one 7x7 sub-image per chunk

    model = build_tiny_model(tiny_processor, preset="micro", seed=0).train()
    torch.manual_seed(0)
    features = torch.randn(6, 49, model.config.vision_config.hidden_size)
    mask = torch.ones(6, 49, dtype=torch.bool)
    mask[3, 30:] = False  # a padded sub-image
    plain_bytes, plain_out, plain_grads = _connector_step(model, features, mask)
    model.activation_checkpointing_enable()
    kept_bytes, out, grads = _connector_step(model, features, mask)
    assert torch.allclose(out, plain_out, atol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, plain_grads[name], atol=1e-5, rtol=1e-4), name
    input_bytes = features.numel() * features.element_size()
    assert kept_bytes < plain_bytes / 4
    assert kept_bytes <= input_bytes + out.numel() * out.element_size() + mask.numel() * 8


def test_a_batch_within_the_budget_runs_the_connector_as_idefics2_does(tiny_processor):
    """Small inputs (the tiny CPU models) are not chunked: the same single call, bit for bit."""
    from modeling_finedefics.tiny import build_tiny_model

    model = build_tiny_model(tiny_processor, preset="micro", seed=0).train()
    features = torch.randn(6, 49, model.config.vision_config.hidden_size)
    mask = torch.ones(6, 49, dtype=torch.bool)
    plain_bytes, plain_out, plain_grads = _connector_step(model, features, mask)
    model.activation_checkpointing_enable()
    kept_bytes, out, grads = _connector_step(model, features, mask)
    assert kept_bytes == plain_bytes and torch.equal(out, plain_out)
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


# ----------------------------------------------------------------------------- several processes
@pytest.mark.parametrize("deepspeed, env", [
    ({"zero_optimization": {"stage": 3}}, {}),
    (None, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}),
])
def test_qlora_under_zero3_is_refused_before_any_weight_loads(deepspeed, env, monkeypatch):
    from types import SimpleNamespace

    from finedefics_training.recipe import ModelArguments, check_distributed_setup

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = SimpleNamespace(deepspeed=deepspeed)
    with pytest.raises(ValueError,
                       match=r"qlora cannot run under DeepSpeed ZeRO-3 .*accelerate_configs/multi_gpu\.yaml"):
        check_distributed_setup(ModelArguments(tuning="qlora"), args)
    check_distributed_setup(ModelArguments(tuning="lora"), args)  # LoRA shards fine


def test_two_process_lora_run_merges_the_adapter_trainer_gathered(tmp_path, micro_checkpoint, toy_dataset_dir):
    """Several processes save through Trainer.save_model (what gathers ZeRO-3 shards), then merge on the main one."""
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    recipe = tmp_path / "lora.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir), output_dir=str(tmp_path / "run"),
        tuning="lora", lora_dropout=0.0, stage=1, max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, num_negatives=2, dataloader_num_workers=0,
        disable_tqdm=True, logging_steps=1)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "finedefics_cli", "train", "--config", str(recipe)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["final"]  # nothing gathered left
    merged, base = load_file(final / "model.safetensors"), load_file(micro_checkpoint / "model.safetensors")
    assert set(merged) == set(base)
    name = "model.text_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], base[name]), "the trained adapter was not merged"
    assert torch.equal(merged["model.vision_model.embeddings.patch_embedding.weight"],
                       base["model.vision_model.embeddings.patch_embedding.weight"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_reentrant_checkpoint_still_trains_the_connector_behind_a_frozen_tower(tiny_processor, monkeypatch):
    """PEFT under ZeRO-3 needs reentrant checkpointing, whose parameters get no gradient when no input needs one."""
    from modeling_finedefics.modeling_finedefics import FinedeficsConnector
    from modeling_finedefics.tiny import build_tiny_model

    monkeypatch.setattr(FinedeficsConnector, "checkpoint_patch_budget", 49)

    model = build_tiny_model(tiny_processor, preset="micro", seed=0).train()
    features = torch.randn(2, 49, model.config.vision_config.hidden_size)  # a frozen tower's output: no grad
    mask = torch.ones(2, 49, dtype=torch.bool)
    _, _, plain = _connector_step(model, features, mask)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    _, _, reentrant = _connector_step(model, features, mask)
    for name, grad in reentrant.items():
        assert torch.allclose(grad, plain[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_under_zero3_every_parameter_has_the_models_dtype(micro_checkpoint_with_heads, tuning, monkeypatch):
    """ZeRO-3's one-dtype gather buffers: PEFT's float32 adapters beside a bf16 base fail its first step."""
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import ModelArguments, load_model_and_processor

    args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    model_args = ModelArguments(model_name_or_path=str(micro_checkpoint_with_heads), tuning=tuning,
                                torch_dtype="bfloat16")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    model, _ = load_model_and_processor(model_args, args)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")  # outside ZeRO-3 they stay float32
    model, _ = load_model_and_processor(model_args, args)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}


def test_two_stage_dry_run_plans_both_stages_and_leaves_no_temporary_recipe(tmp_path, micro_checkpoint, capsys,
                                                                             monkeypatch):
    """stage2_ keys are taken out of the recipe through a rewritten copy, which must not outlive the command."""
    import tempfile

    import yaml

    from finedefics_cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    recipe = tmp_path / "two-stage.yaml"
    recipe.write_text(yaml.safe_dump(dict(model_name_or_path=str(micro_checkpoint), dataset_dir=str(tmp_path),
                                          output_dir=str(tmp_path / "run"), tuning="lora",
                                          per_device_train_batch_size=2,
                                          stage2_per_device_train_batch_size=6, report_to="none")))
    assert main(["two-stage", "--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, stage 1:" in out and "dry run, stage 2:" in out
    assert "per-device step: 2 rows" in out and "per-device step: 6 rows" in out
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "run").exists()
