"""The attribute contrastive losses against hand-computed values, awkward batches, and the cross-rank gather."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finedefics_training.losses import (
    ContrastiveBatch,
    FinedeficsContrastiveLoss,
    attribute_category_loss,
    category_category_loss,
    object_attribute_loss,
)

SCALE = torch.tensor(2.0)


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _nce(query, target, others):
    """-log softmax of the target among target + others, by hand with math (no torch CE)."""
    def dot(a, b):
        return float(sum(x * y for x, y in zip(a.tolist(), b.tolist())))

    logits = [2.0 * dot(query, target)] + [2.0 * dot(query, other) for other in others]
    return -(logits[0] - math.log(sum(math.exp(v) for v in logits)))


@pytest.fixture
def batch():
    """Three rows: rows 0 and 1 are the same category (duplicates); row 2 has no description."""
    return ContrastiveBatch(
        image_embeds=_unit([1, 0, 0], [0.8, 0.6, 0], [0, 1, 0]),
        attribute_embeds=_unit([0.9, 0.1, 0.2], [0.7, 0.7, 0.1], [0, 0, 1]),
        attribute_mask=torch.tensor([True, True, False]),
        category_embeds=_unit([1, 1, 0], [1, 1, 0], [0, 1, 1]),
        category_ids=torch.tensor([5, 5, 9]),
        neg_attribute_embeds=torch.stack([_unit([0, 1, 0], [1, 0, 1]), _unit([0, 0, 1], [0, 0, 1]), _unit([1, 0, 0], [0, 1, 0])]),
        neg_attribute_mask=torch.tensor([[True, True], [True, False], [True, True]]),
        neg_category_embeds=torch.stack([_unit([0, 1, 1], [1, 0, 1]), _unit([0, 1, 1], [1, 0, 0]), _unit([1, 1, 0], [1, 0, 0])]),
        neg_category_mask=torch.tensor([[True, True], [True, False], [True, True]]),
        neg_category_ids=torch.tensor([[9, 7], [9, -1], [5, 9]]),  # row 2's second negative is itself
    )


def test_object_attribute_by_hand(batch):
    v, a, na = batch.image_embeds, batch.attribute_embeds, batch.neg_attribute_embeds
    # image -> text, rows with a description (0, 1); row 1 is row 0's duplicate, so each sees no
    # in-batch column but its own; hard negatives are extra columns (row 1's second is padding;
    # row 0's first negative has id 9 != 5, live).
    i2t = [_nce(v[0], a[0], [na[0, 0], na[0, 1]]), _nce(v[1], a[1], [na[1, 0]])]
    # text -> image: descriptions 0 and 1 only see each other's image, which is a duplicate (masked),
    # and row 2's image has no description: that direction has no negative at all, cannot be formed,
    # and the term is the image -> text direction alone (not halved by an empty direction).
    expected = sum(i2t) / 2
    assert object_attribute_loss(batch, SCALE).item() == pytest.approx(expected, rel=1e-5)


def test_attribute_category_by_hand(batch):
    a, c, na, nc = batch.attribute_embeds, batch.category_embeds, batch.neg_attribute_embeds, batch.neg_category_embeds
    # attribute -> category (rows 0, 1): in-batch columns are c0, c1 (duplicates of each other) and c2.
    a2c = [_nce(a[0], c[0], [c[2], nc[0, 0], nc[0, 1]]), _nce(a[1], c[1], [c[2], nc[1, 0]])]
    # category -> attribute (targets exist for rows 0, 1): keys a0, a1 (duplicates), a2 has no description.
    c2a = [_nce(c[0], a[0], [na[0, 0], na[0, 1]]), _nce(c[1], a[1], [na[1, 0]])]
    expected = 0.5 * (sum(a2c) / 2 + sum(c2a) / 2)
    assert attribute_category_loss(batch, SCALE).item() == pytest.approx(expected, rel=1e-5)


def test_category_category_targets_each_rows_own_category(batch):
    c, nc = batch.category_embeds, batch.neg_category_embeds
    rows = [
        _nce(c[0], c[0], [c[2], nc[0, 0], nc[0, 1]]),
        _nce(c[1], c[1], [c[2], nc[1, 0]]),
        _nce(c[2], c[2], [c[0], c[1], nc[2, 0]]),  # the negative with its own id 9 is masked
    ]
    value = category_category_loss(batch, SCALE).item()
    assert value == pytest.approx(sum(rows) / 3, rel=1e-5)
    # The reference's bug (target 0 for every row) gives a different, wrong value.
    logits = 2.0 * c @ c.T
    assert value != pytest.approx(F.cross_entropy(logits, torch.zeros(3, dtype=torch.long)).item(), rel=1e-3)


def test_duplicates_are_not_negatives(batch):
    """Moving a duplicate's embedding changes nothing for its sibling's in-batch terms."""
    moved = ContrastiveBatch(**{**batch.__dict__, "category_embeds": batch.category_embeds.clone()})
    moved.category_embeds[1] = _unit([-1, 0.2, 0.3])[0]
    row0_before = category_category_loss(ContrastiveBatch(**{**batch.__dict__}), SCALE)
    row0_after = category_category_loss(moved, SCALE)
    # Row 1 itself changes, so compare row 0 alone through a batch without row 1.
    keep = torch.tensor([0, 2])
    only = {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
    alone = category_category_loss(ContrastiveBatch(**only), SCALE).item()
    c, nc = batch.category_embeds, batch.neg_category_embeds
    assert alone == pytest.approx((_nce(c[0], c[0], [c[2], nc[0, 0], nc[0, 1]]) + _nce(c[2], c[2], [c[0], nc[2, 0]])) / 2, rel=1e-5)
    assert row0_before.item() != row0_after.item()


def test_module_weights_terms_and_hard_negative_ablation(batch):
    scales = {"object_attribute": SCALE, "attribute_category": SCALE}
    output = FinedeficsContrastiveLoss(weights=(0.5, 0.25, 1.0))(batch, scales)
    expected = 0.5 * object_attribute_loss(batch, SCALE) + 0.25 * attribute_category_loss(batch, SCALE) + category_category_loss(batch, SCALE)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert output.skipped == []
    no_negatives = FinedeficsContrastiveLoss(use_hard_negatives=False)(batch, scales)
    assert no_negatives.terms["category_category"].item() != pytest.approx(output.terms["category_category"].item())


def _awkward_batches():
    d = 4
    emb = F.normalize(torch.randn(3, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    base = dict(image_embeds=emb, attribute_embeds=emb.flip(0), attribute_mask=torch.ones(3, dtype=torch.bool),
                category_embeds=emb.roll(1, 0), category_ids=torch.tensor([1, 2, 3]))
    negs = dict(neg_attribute_embeds=emb[:, None].expand(3, 2, d), neg_category_embeds=emb[:, None].expand(3, 2, d),
                neg_attribute_mask=torch.zeros(3, 2, dtype=torch.bool), neg_category_mask=torch.zeros(3, 2, dtype=torch.bool),
                neg_category_ids=torch.full((3, 2), -1))
    return {
        "all_same_category": ({**base, "category_ids": torch.tensor([4, 4, 4])}, {"object_attribute", "attribute_category", "category_category"}),
        "no_attributes": ({**base, "attribute_mask": torch.zeros(3, dtype=torch.bool)}, {"object_attribute", "attribute_category"}),
        "all_negatives_padded": ({**base, **negs}, set()),
        "single_row": ({k: v[:1] for k, v in base.items()}, set(TERMS_ALL)),
        "bf16": ({k: (v.bfloat16() if v.is_floating_point() else v) for k, v in base.items()}, set()),
    }


TERMS_ALL = ("object_attribute", "attribute_category", "category_category")


@pytest.mark.parametrize("name", list(_awkward_batches()))
def test_awkward_batches_skip_instead_of_nan(name):
    fields, expected_skipped = _awkward_batches()[name]
    batch = ContrastiveBatch(**{k: (v.clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in fields.items()})
    scale = torch.tensor(14.0, requires_grad=True)
    output = FinedeficsContrastiveLoss()(batch, {"object_attribute": scale, "attribute_category": scale})
    assert set(output.skipped) == expected_skipped
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert torch.isfinite(batch.image_embeds.grad).all() and torch.isfinite(scale.grad)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """gloo, 2 ranks x 4 rows == 1 rank x 8 rows: same loss, and the same gradients after DDP averaging."""
    script = Path(__file__).with_name("distributed_loss_worker.py")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    for world_size in (1, 2):
        result = subprocess.run([sys.executable, str(script), str(world_size), str(tmp_path)],
                                capture_output=True, text=True, env=env, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    single = torch.load(tmp_path / "world1.pt")
    double = torch.load(tmp_path / "world2.pt")
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-6)
    for name in single["terms"]:
        assert double["terms"][name] == pytest.approx(single["terms"][name], rel=1e-6)
    torch.testing.assert_close(double["embedding_grads"], single["embedding_grads"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(double["scale_grads"], single["scale_grads"], rtol=1e-5, atol=1e-7)
