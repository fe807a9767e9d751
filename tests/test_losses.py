"""The attribute contrastive losses against hand-computed values, awkward batches, and the cross-rank gather;
the trainer's LM loss against a plain cross-entropy, and the contrastive batch it indexes from a collated step."""

import hashlib
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_rows

from finedefics_training.collator import IGNORE_INDEX, FinedeficsDataCollator, stable_category_id
from finedefics_training.losses import (
    CONTRASTIVE_TERMS,
    TERMS,
    ContrastiveBatch,
    ContrastiveTexts,
    FinedeficsContrastiveLoss,
    attribute_category_loss,
    category_category_loss,
    object_attribute_loss,
    object_category_loss,
)
from finedefics_training.trainer import causal_lm_loss

SCALE = 2.0


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _nce(query, target, others, scale=SCALE):
    """-log softmax of the target among target + others, with plain Python math."""
    def dot(a, b):
        return sum(x * y for x, y in zip(a.tolist(), b.tolist()))

    logits = [scale * dot(query, target)] + [scale * dot(query, other) for other in others]
    return -(logits[0] - math.log(sum(math.exp(value) for value in logits)))


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture
def batch():
    """Three rows: rows 0 and 1 are the same category (duplicates); row 2 has no description; K = 2."""
    return ContrastiveBatch(
        image_embeds=_unit([1, 0, 0], [0.8, 0.6, 0], [0, 1, 0]),
        attribute_embeds=_unit([0.9, 0.1, 0.2], [0.7, 0.7, 0.1], [0, 0, 1]),
        attribute_mask=torch.tensor([True, True, False]),
        category_embeds=_unit([1, 1, 0], [1, 1, 0], [0, 1, 1]),
        category_ids=torch.tensor([5, 5, 9]),
        neg_attribute_embeds=torch.stack([_unit([0, 1, 0], [1, 0, 1]), _unit([0, 0, 1], [0, 0, 1]),
                                          _unit([1, 0, 0], [0, 1, 0])]),
        neg_attribute_mask=torch.tensor([[True, True], [True, False], [True, True]]),
        neg_category_embeds=torch.stack([_unit([0, 1, 1], [1, 0, 1]), _unit([0, 1, 1], [1, 0, 0]),
                                         _unit([1, 1, 0], [1, 0, 0])]),
        neg_category_mask=torch.tensor([[True, True], [True, False], [True, True]]),
        neg_category_ids=torch.tensor([[9, 7], [9, -1], [5, 9]]),  # row 2's second negative is its own category
    )


def _object_attribute_by_hand(batch, scale):
    v, a, na = batch.image_embeds, batch.attribute_embeds, batch.neg_attribute_embeds
    # image -> text, rows with a description (0, 1): a1 is row 0's duplicate and a2 does not exist, so
    # the only other columns are the live hard negatives (row 1's second one is padding).
    image_to_text = [_nce(v[0], a[0], [na[0, 0], na[0, 1]], scale), _nce(v[1], a[1], [na[1, 0]], scale)]
    # text -> image: each description sees the image of row 2 (no description, still an image), not its duplicate.
    text_to_image = [_nce(a[0], v[0], [v[2]], scale), _nce(a[1], v[1], [v[2]], scale)]
    return 0.5 * (_mean(image_to_text) + _mean(text_to_image))


def _attribute_category_by_hand(batch, scale):
    a, c = batch.attribute_embeds, batch.category_embeds
    na, nc = batch.neg_attribute_embeds, batch.neg_category_embeds
    # attribute -> category (rows 0, 1): c1 / c0 are duplicates, c2 is live, plus the negative names.
    attribute_to_category = [_nce(a[0], c[0], [c[2], nc[0, 0], nc[0, 1]], scale),
                             _nce(a[1], c[1], [c[2], nc[1, 0]], scale)]
    # category -> attribute (targets exist for rows 0, 1): a2 does not exist; the negative descriptions.
    category_to_attribute = [_nce(c[0], a[0], [na[0, 0], na[0, 1]], scale), _nce(c[1], a[1], [na[1, 0]], scale)]
    return 0.5 * (_mean(attribute_to_category) + _mean(category_to_attribute))


def _category_category_by_hand(batch, scale):
    c, nc = batch.category_embeds, batch.neg_category_embeds
    return _mean([
        _nce(c[0], c[0], [c[2], nc[0, 0], nc[0, 1]], scale),
        _nce(c[1], c[1], [c[2], nc[1, 0]], scale),
        _nce(c[2], c[2], [c[0], c[1], nc[2, 0]], scale),  # the negative with its own id 9 is masked
    ])


def test_object_attribute_by_hand(batch):
    expected = _object_attribute_by_hand(batch, SCALE)
    assert object_attribute_loss(batch, torch.tensor(SCALE)).item() == pytest.approx(expected, rel=1e-5)


def test_attribute_category_by_hand(batch):
    expected = _attribute_category_by_hand(batch, SCALE)
    assert attribute_category_loss(batch, torch.tensor(SCALE)).item() == pytest.approx(expected, rel=1e-5)


def test_category_category_targets_each_rows_own_category(batch):
    c = batch.category_embeds
    value = category_category_loss(batch, torch.tensor(SCALE)).item()
    assert value == pytest.approx(_category_category_by_hand(batch, SCALE), rel=1e-5)
    # The reference code's target 0 for every row gives a different value.
    reference_bug = _mean([-(SCALE * (c[i] @ c[0]).item()) + math.log(sum(math.exp(SCALE * (c[i] @ c[j]).item())
                                                                          for j in range(3))) for i in range(3)])
    assert value != pytest.approx(reference_bug, rel=1e-3)


def _object_category_by_hand(batch, scale, nce=_nce):
    v, c, nc = batch.image_embeds, batch.category_embeds, batch.neg_category_embeds
    # image -> name, every row: c1 / c0 are duplicates of rows 0 / 1; row 1's second negative is padding and
    # row 2's second negative is its own category (id 9): both masked.
    image_to_name = [nce(v[0], c[0], [c[2], nc[0, 0], nc[0, 1]], scale), nce(v[1], c[1], [c[2], nc[1, 0]], scale),
                     nce(v[2], c[2], [c[0], c[1], nc[2, 0]], scale)]
    # name -> image: in-batch images only, the duplicate's image masked.
    name_to_image = [nce(c[0], v[0], [v[2]], scale), nce(c[1], v[1], [v[2]], scale),
                     nce(c[2], v[2], [v[0], v[1]], scale)]
    return 0.5 * (_mean(image_to_name) + _mean(name_to_image))


def _torch_nce(query, target, others, scale):
    """``_nce`` with torch operations, so that autograd gives the hand formula's gradient."""
    logits = torch.stack([scale * (query @ target)] + [scale * (query @ other) for other in others])
    return -(logits[0] - torch.logsumexp(logits, dim=0))


def test_object_category_by_hand(batch):
    expected = _object_category_by_hand(batch, SCALE)
    assert object_category_loss(batch, torch.tensor(SCALE)).item() == pytest.approx(expected, rel=1e-5)
    # It reads no description: removing them all leaves it unchanged.
    no_descriptions = replace(batch, attribute_mask=torch.zeros(3, dtype=torch.bool))
    assert object_category_loss(no_descriptions, torch.tensor(SCALE)).item() == pytest.approx(expected, rel=1e-5)


def test_object_category_gradient_is_the_hand_formulas(batch):
    names = ("image_embeds", "category_embeds", "neg_category_embeds")
    leaves = {name: getattr(batch, name).clone().requires_grad_(True) for name in names}
    scale = torch.tensor(SCALE, requires_grad=True)
    loss = object_category_loss(replace(batch, **leaves), scale)
    got = torch.autograd.grad(loss, [*leaves.values(), scale])
    hand_leaves = {name: getattr(batch, name).clone().requires_grad_(True) for name in names}
    hand_scale = torch.tensor(SCALE, requires_grad=True)
    hand = _object_category_by_hand(replace(batch, **hand_leaves), hand_scale, nce=_torch_nce)
    expected = torch.autograd.grad(hand, [*hand_leaves.values(), hand_scale])
    for name, a, b in zip([*names, "scale"], got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert got[2][1, 1].abs().sum() == 0 and got[2][2, 1].abs().sum() == 0  # masked negatives get no gradient
    assert got[2][0, 0].abs().sum() > 0


def test_terms_are_weighted_by_name_and_a_zero_weight_term_is_not_computed(batch):
    scales = {"object_attribute": torch.tensor(2.0), "attribute_category": torch.tensor(3.5)}
    # The "without attribute descriptions" ablation's terms: object-category (object-attribute scale)
    # + category-category.
    output = FinedeficsContrastiveLoss(weights={"object_category": 0.5, "category_category": 0.25})(batch, scales)
    assert set(output.terms) == {"object_category", "category_category"} and output.skipped == []
    expected = 0.5 * _object_category_by_hand(batch, 2.0) + 0.25 * _category_category_by_hand(batch, 3.5)
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    # A term of weight 0 is neither computed nor reported; the registry's own order does not matter.
    zero = FinedeficsContrastiveLoss(weights={"category_category": 0.0, "object_category": 1.0})
    assert zero.active_terms == ["object_category"]
    only = zero(batch, {"object_attribute": torch.tensor(2.0)})  # no text-text scale needed
    assert set(only.terms) == {"object_category"}
    assert only.loss.item() == pytest.approx(_object_category_by_hand(batch, 2.0), rel=1e-5)
    # The default weights are the paper's three terms; the registry adds object_category.
    assert FinedeficsContrastiveLoss().active_terms == list(TERMS)
    assert set(CONTRASTIVE_TERMS) == {*TERMS, "object_category"}
    assert CONTRASTIVE_TERMS["object_category"].scale == "object_attribute"
    with pytest.raises(ValueError, match="unknown contrastive term.*object_atribute"):
        FinedeficsContrastiveLoss(weights={"object_atribute": 0.5})


@pytest.mark.parametrize("name", ["all_same_category", "all_same_category_with_negatives",
                                  "all_same_category_negatives_padded", "no_attributes", "all_negatives_padded",
                                  "single_row", "single_row_with_negatives", "float16", "bfloat16"])
def test_object_category_on_awkward_batches_is_never_nan(name):
    fields, _ = _awkward_batches()[name]
    # It needs no description; it cannot be formed where every non-target column is masked.
    cannot = {"all_same_category", "all_same_category_negatives_padded", "single_row"}
    dtype = getattr(torch, name, torch.float32)
    fields = {k: (v.to(dtype).requires_grad_(True) if v.is_floating_point() else v) for k, v in fields.items()}
    scales = {"object_attribute": torch.tensor(14.0, dtype=dtype, requires_grad=True)}
    output = FinedeficsContrastiveLoss(weights={"object_category": 1.0})(ContrastiveBatch(**fields), scales)
    assert output.skipped == (["object_category"] if name in cannot else [])
    assert set(output.terms) == (set() if name in cannot else {"object_category"})
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in fields.values() if v.is_floating_point())
    assert torch.isfinite(scales["object_attribute"].grad)


def test_training_config_reads_weights_by_term_name():
    from finedefics_training.config import FinedeficsTrainingConfig

    def config(**fields):
        return FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, **fields)

    assert config().contrastive_weights == {"object_attribute": 0.5, "attribute_category": 0.5,
                                            "category_category": 0.5, "object_category": 0.0}
    ablation = config(use_attribute_descriptions=False, object_category_weight=0.5)
    # Without descriptions the terms that need them cannot be formed: they weigh 0 whatever their fields say.
    assert ablation.contrastive_weights == {"object_attribute": 0.0, "attribute_category": 0.0,
                                            "category_category": 0.5, "object_category": 0.5}
    assert FinedeficsContrastiveLoss(weights=ablation.contrastive_weights).active_terms == \
        ["category_category", "object_category"]
    with pytest.raises(ValueError, match="stage1_recognition_ratio"):
        config(stage1_recognition_ratio=1.5)


def _duplicate_batch(category_ids):
    """Four rows of categories A, A, B, C: the two A images differ but share one name and one description."""
    name_a, description_a = _unit([1, 0.2, 0, 0])[0], _unit([0.9, 0, 0.3, 0])[0]
    return ContrastiveBatch(
        image_embeds=_unit([1, 0, 0.1, 0], [0.8, 0.3, 0, 0.2], [0, 1, 0, 0.1], [0, 0, 1, 0.3]),
        attribute_embeds=torch.stack([description_a, description_a, *_unit([0.1, 1, 0, 0], [0, 0.2, 1, 0.1])]),
        attribute_mask=torch.ones(4, dtype=torch.bool),
        category_embeds=torch.stack([name_a, name_a, *_unit([0.3, 1, 0, 0], [0, 0, 1, 1])]),
        category_ids=torch.tensor(category_ids),
    )


def _hand_loss(loss_name, batch, ids):
    """Each term with explicit loops; columns j != i whose id equals row i's id are left out."""
    v, a, c = batch.image_embeds, batch.attribute_embeds, batch.category_embeds

    def direction(queries, keys):
        return _mean([_nce(queries[i], keys[i], [keys[j] for j in range(4) if j != i and ids[j] != ids[i]])
                      for i in range(4)])

    if loss_name == "object_attribute":
        return 0.5 * (direction(v, a) + direction(a, v))
    if loss_name == "attribute_category":
        return 0.5 * (direction(a, c) + direction(c, a))
    if loss_name == "object_category":
        return 0.5 * (direction(v, c) + direction(c, v))
    return direction(c, c)


LOSSES = {"object_attribute": object_attribute_loss, "attribute_category": attribute_category_loss,
          "category_category": category_category_loss, "object_category": object_category_loss}


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_batch_duplicates_are_not_negatives(loss_name):
    """Two images of one species: with equal ids their shared name/description is not a negative."""
    duplicates = _duplicate_batch([1, 1, 2, 3])
    distinct = _duplicate_batch([1, 4, 2, 3])  # same embeddings, the duplicate relabelled as another category
    masked = LOSSES[loss_name](duplicates, torch.tensor(SCALE)).item()
    unmasked = LOSSES[loss_name](distinct, torch.tensor(SCALE)).item()
    assert masked == pytest.approx(_hand_loss(loss_name, duplicates, [1, 1, 2, 3]), rel=1e-5)
    assert unmasked == pytest.approx(_hand_loss(loss_name, distinct, [1, 4, 2, 3]), rel=1e-5)
    assert masked < unmasked  # the identical sibling would otherwise compete with the target


def test_module_weights_terms_and_hard_negative_ablation(batch):
    # Two different scales: L_oa takes the object-attribute one, L_ac and L_cc the attribute-category one.
    oa_scale, ac_scale = 2.0, 3.5
    scales = {"object_attribute": torch.tensor(oa_scale), "attribute_category": torch.tensor(ac_scale)}
    output = FinedeficsContrastiveLoss(weights=(0.5, 0.25, 1.0))(batch, scales)
    assert output.skipped == [] and set(output.terms) == set(TERMS)
    by_hand = {"object_attribute": _object_attribute_by_hand(batch, oa_scale),
               "attribute_category": _attribute_category_by_hand(batch, ac_scale),
               "category_category": _category_category_by_hand(batch, ac_scale)}
    for name, expected in by_hand.items():
        assert output.terms[name].item() == pytest.approx(expected, rel=1e-5), name
    expected = 0.5 * by_hand["object_attribute"] + 0.25 * by_hand["attribute_category"] + by_hand["category_category"]
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    # Without hard negatives, L_cc sees in-batch names only (duplicates still masked).
    c = batch.category_embeds
    in_batch_only = _mean([_nce(c[0], c[0], [c[2]], ac_scale), _nce(c[1], c[1], [c[2]], ac_scale),
                           _nce(c[2], c[2], [c[0], c[1]], ac_scale)])
    ablation = FinedeficsContrastiveLoss(use_hard_negatives=False)(batch, scales)
    assert ablation.terms["category_category"].item() == pytest.approx(in_batch_only, rel=1e-5)


def _awkward_batches():
    d = 4
    emb = F.normalize(torch.randn(3, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    base = dict(image_embeds=emb, attribute_embeds=emb.flip(0), attribute_mask=torch.ones(3, dtype=torch.bool),
                category_embeds=emb.roll(1, 0), category_ids=torch.tensor([1, 2, 3]))
    negatives = dict(neg_attribute_embeds=emb.flip(1)[:, None].expand(3, 2, d).clone(),
                     neg_category_embeds=emb.roll(1, 1)[:, None].expand(3, 2, d).clone(),
                     neg_attribute_mask=torch.ones(3, 2, dtype=torch.bool),
                     neg_category_mask=torch.ones(3, 2, dtype=torch.bool), neg_category_ids=torch.full((3, 2), -1))
    padded = {**negatives, "neg_attribute_mask": torch.zeros(3, 2, dtype=torch.bool),
              "neg_category_mask": torch.zeros(3, 2, dtype=torch.bool)}
    same = torch.tensor([4, 4, 4])
    return {  # name: (fields, terms expected to be skipped)
        "all_same_category": ({**base, "category_ids": same}, set(TERMS)),
        "all_same_category_with_negatives": ({**base, **negatives, "category_ids": same}, set()),
        "all_same_category_negatives_padded": ({**base, **padded, "category_ids": same}, set(TERMS)),
        "no_attributes": ({**base, "attribute_mask": torch.zeros(3, dtype=torch.bool)},
                          {"object_attribute", "attribute_category"}),
        "all_negatives_padded": ({**base, **padded}, set()),
        "single_row": ({k: v[:1] for k, v in base.items()}, set(TERMS)),
        "single_row_with_negatives": ({k: v[:1] for k, v in {**base, **negatives}.items()}, set()),
        "float16": ({**base, **negatives}, set()),
        "bfloat16": ({**base, **negatives}, set()),
    }


@pytest.mark.parametrize("name", list(_awkward_batches()))
def test_awkward_batches_skip_instead_of_nan(name):
    fields, expected_skipped = _awkward_batches()[name]
    dtype = getattr(torch, name, torch.float32)
    fields = {k: (v.to(dtype).requires_grad_(True) if v.is_floating_point() else v) for k, v in fields.items()}
    scales = {"object_attribute": torch.tensor(14.0, dtype=dtype, requires_grad=True),
              "attribute_category": torch.tensor(9.0, dtype=dtype, requires_grad=True)}
    output = FinedeficsContrastiveLoss()(ContrastiveBatch(**fields), scales)
    assert set(output.skipped) == expected_skipped
    assert set(output.terms) == set(TERMS) - expected_skipped
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in fields.values() if v.is_floating_point())
    assert all(torch.isfinite(scale.grad) for scale in scales.values())
    if dtype != torch.float32:  # computed in float32: same value as the float32 copy of the rounded inputs
        upcast = {k: (v.detach().float() if v.is_floating_point() else v) for k, v in fields.items()}
        reference = FinedeficsContrastiveLoss()(ContrastiveBatch(**upcast),
                                                {name: scale.detach().float() for name, scale in scales.items()})
        assert output.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)


def test_a_row_without_negatives_adds_a_finite_zero():
    """A row whose every non-target column is masked keeps its target: a finite 0 in the mean, not NaN."""
    triplicate = replace(_duplicate_batch([1, 1, 2, 3]), category_ids=torch.tensor([1, 1, 1, 3]))
    c = triplicate.category_embeds
    rows = [_nce(c[0], c[0], [c[3]]), _nce(c[1], c[1], [c[3]]), _nce(c[2], c[2], [c[3]]),
            _nce(c[3], c[3], [c[0], c[1], c[2]])]
    assert category_category_loss(triplicate, torch.tensor(SCALE)).item() == pytest.approx(_mean(rows), rel=1e-5)
    # One category only; row i's single hard negative is c[3 - i], live for rows 0 and 2 only.
    one_category = replace(triplicate, category_ids=torch.tensor([1, 1, 1, 1]), neg_category_embeds=c.flip(0)[:, None],
                           neg_category_mask=torch.tensor([[True], [False], [True], [False]]))
    expected = _mean([_nce(c[0], c[0], [c[3]]), 0.0, _nce(c[2], c[2], [c[1]]), 0.0])
    assert category_category_loss(one_category, torch.tensor(SCALE)).item() == pytest.approx(expected, rel=1e-5)


def test_bad_input_names_the_field(batch):
    with pytest.raises(ValueError, match="attribute_embeds"):
        replace(batch, attribute_embeds=batch.attribute_embeds[:2])
    with pytest.raises(ValueError, match="neg_category_ids"):
        replace(batch, neg_category_ids=batch.neg_category_ids[:, :1])
    with pytest.raises(ValueError, match="neg_attribute_mask"):
        replace(batch, neg_attribute_mask=None)
    with pytest.raises(ValueError, match="attribute_category"):
        FinedeficsContrastiveLoss()(batch, {"object_attribute": torch.tensor(SCALE)})
    with pytest.raises(ValueError, match="weights"):
        FinedeficsContrastiveLoss(weights=(0.5, 0.5))


# ------------------------------------------------------------------ the trainer's LM loss
def test_causal_lm_loss_is_the_cross_entropy_of_each_next_answer_token():
    vocab = 7
    logits = torch.randn(2, 6, vocab, generator=torch.Generator().manual_seed(0))
    # Row 1's first label is real, but no position precedes it: it can never be a target.
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 5, 1, IGNORE_INDEX],
                           [4, 2, 2, 6, IGNORE_INDEX, IGNORE_INDEX]])
    logits[0, 1, 3] = 10.0  # position 1 predicts token 2's label: one sure hit
    losses, hits = [], []
    for row in range(2):
        for t in range(1, labels.shape[1]):
            if labels[row, t] == IGNORE_INDEX:
                continue
            scores = logits[row, t - 1].tolist()  # position t - 1 predicts token t
            target = labels[row, t].item()
            losses.append(math.log(sum(math.exp(x) for x in scores)) - scores[target])
            hits.append(float(max(range(vocab), key=scores.__getitem__) == target))
    loss, accuracy = causal_lm_loss(logits, labels)
    assert len(losses) == 6
    assert loss.item() == pytest.approx(_mean(losses), rel=1e-6)
    assert accuracy.item() == pytest.approx(_mean(hits)) and 0 < accuracy.item() < 1


def test_causal_lm_loss_without_answer_tokens_is_a_zero_with_a_gradient():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss, accuracy = causal_lm_loss(logits, torch.full((2, 4), IGNORE_INDEX))
    assert loss.item() == 0.0 and accuracy.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ------------------------------------------------------- the contrastive batch of a collated step
def _text_vector(text, dim=8):
    """A unit vector that depends on the text only: stands in for the model's embedding of that text."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")
    return F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_contrastive_batch_takes_each_rows_own_description_name_and_negatives(tiny_processor):
    """Collate stage I rows, embed each distinct text, index: every row gets the vectors of ITS texts."""
    rows = toy_rows(6)  # rows 4 and 5 repeat the categories (and texts) of rows 0 and 1
    rows[1]["attribute"] = None  # no description
    rows[2]["neg_categories"], rows[2]["neg_attributes"] = rows[2]["neg_categories"][:1], rows[2]["neg_attributes"][:1]
    rows[3]["neg_attributes"] = rows[3]["neg_attributes"][:1]  # a name without its description
    collated = FinedeficsDataCollator(processor=tiny_processor, stage=1, num_negatives=2)(rows)
    texts = tiny_processor.tokenizer.batch_decode(collated["contrastive_input_ids"], skip_special_tokens=True)
    expected_texts = {text for row in rows for text in [row["category"], row["attribute"], *row["neg_categories"],
                                                        *row["neg_attributes"]] if text}
    assert sorted(texts) == sorted(expected_texts)  # each distinct text once, none dropped
    image_embeds = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    built = ContrastiveTexts.from_batch(collated).embed(image_embeds, torch.stack([_text_vector(t) for t in texts]))

    assert torch.equal(built.image_embeds, image_embeds)
    assert built.attribute_mask.tolist() == [True, False, True, True, True, True]
    assert built.neg_category_mask.tolist() == [[True, True], [True, True], [True, False], [True, True],
                                                [True, True], [True, True]]
    assert built.neg_attribute_mask.tolist() == [[True, True], [True, True], [True, False], [True, False],
                                                 [True, True], [True, True]]
    for i, row in enumerate(rows):
        assert torch.equal(built.category_embeds[i], _text_vector(row["category"])), i
        assert built.category_ids[i].item() == stable_category_id(row["category"])
        if row["attribute"]:
            assert torch.equal(built.attribute_embeds[i], _text_vector(row["attribute"])), i
        for k, name in enumerate(row["neg_categories"]):
            assert torch.equal(built.neg_category_embeds[i, k], _text_vector(name)), (i, k)
            assert built.neg_category_ids[i, k].item() == stable_category_id(name)
        for k, description in enumerate(row["neg_attributes"]):
            assert torch.equal(built.neg_attribute_embeds[i, k], _text_vector(description)), (i, k)
    assert built.neg_category_ids[2, 1].item() == -1  # padding has no category


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """Every scenario of distributed_loss_worker.py in 1 process and in 2 gloo processes."""
    out = tmp_path_factory.mktemp("distributed-loss")
    script = Path(__file__).with_name("distributed_loss_worker.py")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    for world_size in (1, 2):
        result = subprocess.run([sys.executable, str(script), str(world_size), str(out)],
                                capture_output=True, text=True, env=env, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "world1.pt"), torch.load(out / "world2.pt")


@pytest.mark.parametrize("scenario",
                         ["even", "uneven", "ragged_negatives", "missing_negatives", "gather_without_grad"])
def test_two_processes_match_one_process(distributed_results, scenario):
    """2 ranks (4 + 4 rows, or 5 + 3, or ranks with different K) == 1 rank with the 8 rows: same loss and,
    after DDP's gradient averaging, the same gradients for the embeddings and the logit scales."""
    single, double = (results[scenario] for results in distributed_results)
    assert double["skipped"] == single["skipped"] == []
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-6)
    for name in TERMS:
        assert double["terms"][name] == pytest.approx(single["terms"][name], rel=1e-6)
    torch.testing.assert_close(double["scale_grads"], single["scale_grads"], rtol=1e-5, atol=1e-7)
    # Without gradients through the gather, a rank's rows only get its own copy of the loss's gradient.
    share = 0.5 if scenario == "gather_without_grad" else 1.0
    assert single["embedding_grads"].abs().sum() > 0
    torch.testing.assert_close(double["embedding_grads"], share * single["embedding_grads"], rtol=1e-5, atol=1e-7)
