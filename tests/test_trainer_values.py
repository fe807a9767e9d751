"""The trainer and the recipe checked by value: the total loss, merges, stage chaining, freezing,
temperature handling, gradient accumulation and two processes against one."""

import pytest
import torch
from datasets import Dataset

from conftest import toy_rows

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
