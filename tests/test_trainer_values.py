"""The trainer and the recipe checked by value: the total loss, merges, stage chaining, freezing,
temperature handling, gradient accumulation and two processes against one."""

import math

import pytest
import torch
from conftest import toy_rows
from datasets import Dataset

from finedefics_training.losses import TERMS

TERM_WEIGHTS = {"object_attribute": 0.3, "attribute_category": 0.7, "category_category": 1.9}


def _load_micro(folder):
    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    return FinedeficsForConditionalGeneration.from_pretrained(folder), FinedeficsProcessor.from_pretrained(folder)


def _training_args(tmp_path, **fields):
    from finedefics_training.config import FinedeficsTrainingConfig

    defaults = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", seed=0, num_negatives=2,
                    per_device_train_batch_size=8, dataloader_num_workers=0, disable_tqdm=True, save_strategy="no")
    return FinedeficsTrainingConfig(**{**defaults, **fields})


# ----------------------------------------------------------------- reference values
def _nce(query, target, others, scale):
    """-log softmax of the target among target + others, in float64 (one row, plain formula)."""
    logits = scale * torch.stack([query @ target] + [query @ other for other in others]).double()
    return (torch.logsumexp(logits, dim=0) - logits[0]).item()


def _mean(values):
    return sum(values) / len(values)


def _reference_terms(model, processor, batch, rows):
    """``L_oa``, ``L_ac``, ``L_cc`` from the formulas in ``training/losses.py``, row by row, with every text
    embedded on its own and the images embedded from pixels (not the trainer's shared pass)."""
    def embed(text):
        encoded = processor.tokenize_texts([text])
        return model.get_text_embeddings(encoded["input_ids"], encoded["attention_mask"])[0].double()

    images = model.get_image_embeddings(batch["pixel_values"], batch.get("pixel_attention_mask")).double()
    attributes = [embed(row["attribute"]) for row in rows]
    names = [embed(row["category"]) for row in rows]
    neg_attributes = [[embed(text) for text in row["neg_attributes"]] for row in rows]
    neg_names = [[embed(text) for text in row["neg_categories"]] for row in rows]
    scales = {name: scale.item() for name, scale in model.get_logit_scales().items()}
    n = len(rows)

    def others(i, column):
        """In-batch columns other than i, without siblings of row i's category (they are not negatives)."""
        return [column[j] for j in range(n) if rows[j]["category"] != rows[i]["category"]]

    s_oa, s_ac = scales["object_attribute"], scales["attribute_category"]
    image_to_text = _mean([_nce(images[i], attributes[i], others(i, attributes) + neg_attributes[i], s_oa)
                           for i in range(n)])
    text_to_image = _mean([_nce(attributes[i], images[i], others(i, images), s_oa) for i in range(n)])
    attribute_to_name = _mean([_nce(attributes[i], names[i], others(i, names) + neg_names[i], s_ac) for i in range(n)])
    name_to_attribute = _mean([_nce(names[i], attributes[i], others(i, attributes) + neg_attributes[i], s_ac)
                               for i in range(n)])
    name_to_name = _mean([_nce(names[i], names[i], others(i, names) + neg_names[i], s_ac) for i in range(n)])
    return {"object_attribute": (image_to_text + text_to_image) / 2,
            "attribute_category": (attribute_to_name + name_to_attribute) / 2,
            "category_category": name_to_name}


def _reference_lm_loss(model, batch):
    """Mean next-token negative log-likelihood of the supervised (answer) tokens."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
              if key in batch}
    log_probs = model(**inputs).logits[:, :-1].double().log_softmax(-1)
    targets = batch["labels"][:, 1:]
    picked = [-log_probs[b, t, targets[b, t]] for b, t in (targets != -100).nonzero().tolist()]
    return torch.stack(picked).mean().item()


# ---------------------------------------------------------------------- 1. total loss
def test_total_loss_is_lm_plus_the_weighted_contrastive_terms(tmp_path, micro_checkpoint):
    from finedefics_training.trainer import FinedeficsTrainer

    model, processor = _load_micro(micro_checkpoint)
    rows = toy_rows(8)
    weights = {f"{name}_weight": value for name, value in TERM_WEIGHTS.items()}
    trainer = FinedeficsTrainer(model=model, args=_training_args(tmp_path, stage=1, **weights),
                                train_dataset=Dataset.from_list(rows), processing_class=processor)
    batch = trainer.data_collator(toy_rows(8))
    model.eval()
    with torch.no_grad():
        total = trainer.compute_loss(model, dict(batch)).item()
        expected_terms = _reference_terms(model, processor, batch, rows)
        expected_lm = _reference_lm_loss(model, batch)

    logged = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    assert logged["lm_loss"] == pytest.approx(expected_lm, rel=1e-5)
    for name, value in expected_terms.items():
        assert logged[f"loss_{name}"] == pytest.approx(value, rel=1e-4), name
        assert value > 0.01  # a vanishing term would leave its weight untested
    expected_total = expected_lm + sum(TERM_WEIGHTS[name] * value for name, value in expected_terms.items())
    assert total == pytest.approx(expected_total, rel=1e-5)


# ---------------------------------------------------------------------------- 2. merges
def _model_args(folder, **fields):
    from finedefics_training.recipe import ModelArguments

    return ModelArguments(model_name_or_path=str(folder), **fields)


def _train_adapter_by_hand(peft_model, seed=0):
    """Give the adapter values training would: LoRA B away from its zero init, temperatures moved."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
            elif "modules_to_save" in name and "temperatures" in name:
                parameter.fill_(math.log(1 / 0.3) if name.endswith("object_attribute") else math.log(1 / 0.5))


def _comparison_inputs(processor):
    """Images, prompts and contrastive texts of four toy rows, as the model's forward takes them."""
    from finedefics_training.collator import FinedeficsDataCollator

    batch = FinedeficsDataCollator(processor=processor, stage=1, num_negatives=2)(toy_rows(4))
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "contrastive_input_ids",
            "contrastive_attention_mask")
    return {key: batch[key] for key in keys if key in batch}


@torch.no_grad()
def _outputs(model, inputs):
    out = model.eval()(**inputs, use_cache=False)
    return {"logits": out.logits, "image_embeds": out.image_embeds, "text_embeds": out.text_embeds,
            **{f"scale_{name}": scale for name, scale in out.logit_scales.items()}}


def _assert_outputs_close(actual, expected, atol):
    for name in expected:
        torch.testing.assert_close(actual[name].float(), expected[name].float(), rtol=1e-4, atol=atol, msg=name)


def _assert_outputs_differ(first, second, by):
    """The adapter changes every output, so an unmerged or half-merged checkpoint cannot pass."""
    for name in first:
        assert (first[name].float() - second[name].float()).abs().max() > by, name


def test_lora_merge_gives_the_adapter_models_outputs(tmp_path, micro_checkpoint):
    from finedefics_training.recipe import load_model_and_processor, merge_and_save
    from modeling_finedefics import FinedeficsForConditionalGeneration

    peft_model, processor = load_model_and_processor(_model_args(micro_checkpoint, tuning="lora"),
                                                     _training_args(tmp_path))
    _train_adapter_by_hand(peft_model)
    inputs = _comparison_inputs(processor)
    with_adapter = _outputs(peft_model, inputs)

    final = merge_and_save(peft_model, processor, tmp_path / "merged")
    merged = _outputs(FinedeficsForConditionalGeneration.from_pretrained(final), inputs)
    _assert_outputs_close(merged, with_adapter, atol=1e-4)
    base = _outputs(FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint), inputs)
    _assert_outputs_differ(with_adapter, base, by=1e-2)


def test_dequantised_qlora_merge_applies_the_adapter_to_the_full_precision_base(tmp_path, micro_checkpoint):
    """The merged checkpoint = the full-precision base running the trained adapter unmerged (no nf4 rounding)."""
    pytest.importorskip("bitsandbytes")
    from peft import get_peft_model

    from finedefics_training.recipe import load_model_and_processor, merge_and_save
    from modeling_finedefics import FinedeficsForConditionalGeneration

    qlora_model, processor = load_model_and_processor(
        _model_args(micro_checkpoint, tuning="qlora", torch_dtype="float32"), _training_args(tmp_path))
    _train_adapter_by_hand(qlora_model)
    inputs = _comparison_inputs(processor)
    quantised = _outputs(qlora_model, inputs)

    # The same adapter values on the full-precision base, unmerged: copied parameter by parameter.
    reference = get_peft_model(FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint),
                               qlora_model.peft_config["default"])
    trained = dict(qlora_model.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(trained[name])
                copied += 1
    assert copied > 0
    expected = _outputs(reference, inputs)

    final = merge_and_save(qlora_model, processor, tmp_path / "merged")
    merged = _outputs(FinedeficsForConditionalGeneration.from_pretrained(final), inputs)
    _assert_outputs_close(merged, expected, atol=1e-4)
    base = _outputs(FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint), inputs)
    _assert_outputs_differ(expected, base, by=1e-2)
    # The 4-bit model differs from the merge by nf4 rounding only: far less than the adapter's own effect.
    rounding = (merged["logits"] - quantised["logits"]).abs().max()
    adapter_effect = (expected["logits"] - base["logits"]).abs().max()
    assert rounding < 0.5 * adapter_effect, (rounding, adapter_effect)


# ------------------------------------------------------------------- 3. stage chaining
def _merged_state(model):
    """The weights a model stands for: a LoRA model's adapter merged into a copy of its base."""
    import copy

    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_stage_two_starts_from_stage_ones_merged_weights(tmp_path, micro_checkpoint, toy_dataset_dir, monkeypatch):
    from safetensors.torch import load_file

    from finedefics_training import recipe

    built = {}
    load = recipe.load_model_and_processor

    def load_and_record(model_args, training_args):
        model, processor = load(model_args, training_args)
        built[training_args.stage] = _merged_state(model)  # before the stage trains
        return model, processor

    monkeypatch.setattr(recipe, "load_model_and_processor", load_and_record)
    args = _training_args(tmp_path, output_dir=str(tmp_path / "run"), max_steps=2, learning_rate=5e-2,
                          per_device_train_batch_size=4)
    stage1_dir, _ = recipe.run_two_stage(_model_args(micro_checkpoint, tuning="lora"),
                                         recipe.DataArguments(dataset_dir=str(toy_dataset_dir)), args)

    stage1 = load_file(stage1_dir / "model.safetensors")
    base = load_file(micro_checkpoint / "model.safetensors")
    stage2_start = built[2]
    assert set(stage1) <= set(stage2_start) and len(stage1) > 0
    for name, tensor in stage1.items():
        torch.testing.assert_close(stage2_start[name], tensor, rtol=0, atol=0, msg=name)
    changed = [name for name in stage1 if not torch.equal(stage1[name], base[name])]
    assert any("text_model" in name for name in changed), "stage I did not change the decoder"
    assert "temperatures.object_attribute" in changed


# ----------------------------------------------- 4. freezing, temperatures, accumulation
class _GradientRecorder:
    """A TrainerCallback keeping a copy of every gradient just before each optimiser step."""

    def __init__(self):
        self.steps = []

    def __getattr__(self, event):
        if not event.startswith("on_"):
            raise AttributeError(event)
        return lambda args, state, control, **kwargs: None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({name: p.grad.detach().clone()
                           for name, p in model.named_parameters() if p.grad is not None})


def _train(tmp_path, micro_checkpoint, rows, tuning="full", freeze_vision_tower=True, **fields):
    """Train in process on ``rows``; returns the trainer and the gradients of each optimiser step."""
    from finedefics_training.recipe import load_model_and_processor
    from finedefics_training.trainer import FinedeficsTrainer

    args = _training_args(tmp_path, **{"max_steps": 2, "logging_steps": 1, **fields})
    model, processor = load_model_and_processor(
        _model_args(micro_checkpoint, tuning=tuning, freeze_vision_tower=freeze_vision_tower), args)
    recorder = _GradientRecorder()
    trainer = FinedeficsTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=processor, callbacks=[recorder])
    trainer.train()
    return trainer, recorder.steps


def _changed(before, after, prefix):
    return [name for name in before if name.startswith(prefix) and not torch.equal(before[name], after[name])]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_vision_tower_keeps_the_vision_tower_unchanged(tmp_path, micro_checkpoint, freeze):
    from safetensors.torch import load_file

    before = load_file(micro_checkpoint / "model.safetensors")
    trainer, _ = _train(tmp_path, micro_checkpoint, toy_rows(8), freeze_vision_tower=freeze, stage=1,
                        learning_rate=1e-2, per_device_train_batch_size=4)
    after = trainer.model.state_dict()
    vision = [name for name in before if name.startswith("model.vision_model.")]
    assert vision
    assert _changed(before, after, "model.text_model.")  # the run really trained
    if freeze:
        assert _changed(before, after, "model.vision_model.") == []
    else:
        assert len(_changed(before, after, "model.vision_model.")) > len(vision) // 2


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_stage_two_freezes_the_temperatures(tmp_path, micro_checkpoint, tuning):
    trainer, steps = _train(tmp_path, micro_checkpoint, toy_rows(8), tuning=tuning, stage=2, learning_rate=1e-2,
                            weight_decay=0.1, per_device_train_batch_size=4)
    core = trainer._core_model()
    temperatures = {name: p for name, p in core.named_parameters() if "temperatures." in name}
    assert temperatures and not any(p.requires_grad for p in temperatures.values())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in temperatures.values()}
    assert core.get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert steps and steps[-1]  # something else did train


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_init_temperature_resets_the_temperatures_the_forward_uses(tmp_path, micro_checkpoint, tuning):
    trainer, _ = _train(tmp_path, micro_checkpoint, toy_rows(8), tuning=tuning, stage=1, init_temperature=0.25,
                        learning_rate=1e-2, per_device_train_batch_size=4)
    first_step = next(entry for entry in trainer.state.log_history if "temperature_object_attribute" in entry)
    # Logged by the first step's forward, before any update.
    assert first_step["temperature_object_attribute"] == pytest.approx(0.25, rel=1e-5)
    assert first_step["temperature_attribute_category"] == pytest.approx(0.25, rel=1e-5)
    assert trainer._core_model().get_logit_scales()["object_attribute"].item() != pytest.approx(4.0, rel=1e-4)


def test_lora_stage_one_trains_the_adapters_copy_of_the_temperatures_only(tmp_path, micro_checkpoint):
    """PEFT trains a copy of ``temperatures`` (modules_to_save) and keeps the original frozen: the trainer must
    not unfreeze the original, whose parameters would sit in the optimiser without ever getting a gradient."""
    from finedefics_training.recipe import load_model_and_processor
    from finedefics_training.trainer import FinedeficsTrainer

    args = _training_args(tmp_path, stage=1, init_temperature=0.25)
    model, processor = load_model_and_processor(_model_args(micro_checkpoint, tuning="lora"), args)
    trainer = FinedeficsTrainer(model=model, args=args, train_dataset=Dataset.from_list(toy_rows(8)),
                                processing_class=processor)
    temperatures = {name: p for name, p in model.named_parameters() if "temperatures." in name}
    trainable = sorted(name.split("temperatures.")[1] for name, p in temperatures.items() if p.requires_grad)
    assert trainable == ["modules_to_save.default.attribute_category", "modules_to_save.default.object_attribute"]
    trainer.create_optimizer()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {name for name, p in temperatures.items() if id(p) in optimised} == {
        name for name, p in temperatures.items() if p.requires_grad}


def test_gradient_accumulation_matches_one_batch_twice_as_large(tmp_path, micro_checkpoint):
    """Stage II (LM loss only), answers of different lengths: 2 x 4 accumulated = 1 x 8 in loss and gradients."""
    rows = toy_rows(8)
    common = dict(stage=2, max_steps=1, optim="sgd", learning_rate=1e-3, lr_scheduler_type="constant",
                  max_grad_norm=0.0, closed_set_ratio=0.5, bf16=False)  # float32: bf16 autocast rounds gradients
    large, (large_grads,) = _train(tmp_path / "large", micro_checkpoint, rows, per_device_train_batch_size=8,
                                   **common)
    accumulated, (accumulated_grads,) = _train(tmp_path / "accumulated", micro_checkpoint, rows,
                                               per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    answers = [len(large.data_collator([row])["labels"].ne(-100).nonzero()) for row in rows]
    assert len(set(answers)) > 1  # micro-batches of unequal token counts: a plain mean of means would differ
    assert accumulated.state.log_history[0]["loss"] == pytest.approx(large.state.log_history[0]["loss"], rel=1e-5)
    assert large_grads.keys() == accumulated_grads.keys() and large_grads
    for name, grad in large_grads.items():
        error = (accumulated_grads[name] - grad).abs().max().item()
        assert error <= 1e-4 * grad.abs().max().item() + 1e-7, (name, error, grad.abs().max().item())


def test_gradient_accumulation_averages_the_contrastive_terms_over_micro_batches(tmp_path, micro_checkpoint):
    """Stage I, 2 x 4 accumulated: the step's loss is L_lm + the weighted terms averaged over the micro-batches."""
    weights = {f"{name}_weight": value for name, value in TERM_WEIGHTS.items()}
    trainer, _ = _train(tmp_path, micro_checkpoint, toy_rows(8), stage=1, max_steps=1, per_device_train_batch_size=4,
                        gradient_accumulation_steps=2, bf16=False, **weights)
    answers = {len(trainer.data_collator([row])["labels"].ne(-100).nonzero()) for row in toy_rows(8)}
    assert len(answers) == 1  # equal answer lengths: the token mean of the step is the mean of the micro-batches'
    logged = trainer.state.log_history[0]  # every metric averaged over the two micro-batches
    expected = logged["lm_loss"] + sum(weight * logged[f"loss_{name}"] for name, weight in TERM_WEIGHTS.items())
    assert logged["loss"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ 5. two processes
def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uneven_rows():
    """Eight stage I rows whose descriptions differ in length, so the two ranks hold unequal answer tokens."""
    rows = toy_rows(8)
    for i, row in enumerate(rows):
        row["attribute"] += ", a long pale tail and dark legs" * (i % 3)
    return rows


def test_two_processes_train_like_one_process_on_the_same_global_batch(tmp_path, micro_checkpoint):
    """One step through torchrun and the trainer: 2 x 4 rows (gloo, CPU) = 1 x 8 rows in loss, terms and weights.

    The contrastive terms must see the other rank's rows as negatives: on 4 rows alone they would differ.
    """
    import json
    import os
    import subprocess
    import sys

    import yaml
    from datasets import DatasetDict
    from safetensors.torch import load_file

    data = tmp_path / "data"
    DatasetDict({"train": Dataset.from_list(_uneven_rows())}).save_to_disk(str(data))
    weights = {f"{name}_weight": value for name, value in TERM_WEIGHTS.items()}
    common = dict(model_name_or_path=str(micro_checkpoint), dataset_dir=str(data), tuning="full", stage=1,
                  max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
                  bf16=False, num_negatives=2, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                  seed=0, dataloader_num_workers=0, disable_tqdm=True, **weights)
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        output = tmp_path / f"world{processes}"
        recipe = tmp_path / f"world{processes}.yaml"
        recipe.write_text(yaml.safe_dump({**common, "output_dir": str(output), "per_device_train_batch_size": batch}))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                   "-m", "finedefics_cli", "train", "--config", str(recipe)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-4000:]
        assert f"world size {processes}" in result.stderr
        runs[processes] = (json.loads((output / "log_history.json").read_text())[0],
                           load_file(output / "final" / "model.safetensors"))

    (one_log, one_weights), (two_log, two_weights) = runs[1], runs[2]
    for key in ["loss", "lm_loss"] + [f"loss_{name}" for name in TERMS]:
        assert two_log[key] == pytest.approx(one_log[key], rel=1e-5), key
    base = load_file(micro_checkpoint / "model.safetensors")
    assert one_weights.keys() == two_weights.keys()
    moved = 0
    for name, tensor in one_weights.items():
        update_one, update_two = tensor - base[name], two_weights[name] - base[name]
        error = (update_two - update_one).abs().max().item()
        assert error <= 1e-4 * update_one.abs().max().item() + 1e-7, (name, error)
        moved += bool(update_one.abs().max() > 0)
    assert moved > len(one_weights) // 2  # the step really updated the model
