r"""The three attribute contrastive terms of Finedefics stage I, with hard negatives, duplicate masking
and an open_clip-style cross-rank gather.

Notation: row ``i`` of a batch has an image embedding ``v_i``, its attribute-description embedding
``a_i`` (absent for some rows), its category-name embedding ``c_i``, and ``K`` hard negatives: names
``c_i^k`` and descriptions ``a_i^k`` of similar but wrong categories. All embeddings are L2-normalised,
``s = 1 / tau`` is a learnable logit scale, and

    InfoNCE(q_i, {keys}, target) = -log( exp(s q_i.target) / sum_{k in keys} exp(s q_i.k) )

- object-attribute (image <-> description; the image side also sees the row's negative descriptions):

      L_oa = 1/2 [ mean_i InfoNCE(v_i, {a_j} u {a_i^k}, a_i) + mean_i InfoNCE(a_i, {v_j}, v_i) ]

- attribute-category (description <-> name; each side sees the other side's hard negatives):

      L_ac = 1/2 [ mean_i InfoNCE(a_i, {c_j} u {c_i^k}, c_i) + mean_i InfoNCE(c_i, {a_j} u {a_i^k}, a_i) ]

- category-category (each name against the batch's other names and its negatives; the target is the
  row's OWN category, not column 0 as in the reference code):

      L_cc = mean_i InfoNCE(c_i, {c_j} u {c_i^k}, c_i)

Duplicates: for ``j != i`` with the same category id (two images of one species) column ``j`` is
masked out of row ``i`` (logit -inf): a sibling image of the same species is not a negative. A hard
negative whose id equals the row's own id is masked too. Padding is masked. A row whose only live
column is its target contributes a finite 0. A term with no live non-target column anywhere in the
batch "cannot be formed": it is skipped and reported, never NaN. ``L_oa`` uses the object-attribute
scale; ``L_ac`` and ``L_cc`` (both text-text) use the attribute-category scale.

Multi-process: every tensor is gathered from all ranks (embeddings with gradients through
``torch.distributed.nn.functional.all_gather``, ids and masks without), so each rank computes the same
loss over the global batch and sees every negative. The gather's backward sums the gradients of every
rank's copy of the loss into the local embeddings (``world_size`` times the single-process gradient);
DDP's gradient averaging divides by ``world_size``, so parameters get exactly the single-process
gradient of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
import torch.nn.functional as F
from torch import Tensor, nn

TERMS = ("object_attribute", "attribute_category", "category_category")


@dataclass
class ContrastiveBatch:
    image_embeds: Tensor  # (B, D)
    attribute_embeds: Tensor  # (B, D)
    attribute_mask: Tensor  # (B,) bool, False where the row has no description
    category_embeds: Tensor  # (B, D)
    category_ids: Tensor  # (B,) int64; equal ids = same category
    neg_attribute_embeds: Tensor | None = None  # (B, K, D)
    neg_attribute_mask: Tensor | None = None  # (B, K) bool, False = padding
    neg_category_embeds: Tensor | None = None  # (B, K, D)
    neg_category_mask: Tensor | None = None  # (B, K) bool
    neg_category_ids: Tensor | None = None  # (B, K) int64, -1 = unknown


@dataclass
class ContrastiveOutput:
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def info_nce(queries: Tensor, keys: Tensor, logit_scale: Tensor, ids: Tensor, query_valid: Tensor,
             key_valid: Tensor, extra_keys: Tensor | None = None, extra_mask: Tensor | None = None) -> Tensor | None:
    """Mean over live rows of InfoNCE with target ``keys[i]`` for query ``i``; None if it cannot be formed.

    In-batch columns ``j != i`` with ``ids[j] == ids[i]`` and invalid keys are masked; ``extra_keys``
    ``(B, K, D)`` are row-specific negatives with ``extra_mask`` ``(B, K)``. Computed in float32.
    """
    queries, keys = queries.float(), keys.float()
    batch = queries.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=queries.device)
    logits = logit_scale * queries @ keys.T
    live = key_valid[None, :] & ~((ids[:, None] == ids[None, :]) & ~eye)
    if extra_keys is not None and extra_keys.shape[1] > 0:
        logits = torch.cat([logits, logit_scale * torch.einsum("bd,bkd->bk", queries, extra_keys.float())], dim=1)
        live = torch.cat([live, extra_mask], dim=1)
    rows = query_valid & key_valid
    negatives = live.clone()
    negatives[:, :batch] &= ~eye
    if not (rows & negatives.any(dim=1)).any():
        return None
    logits = logits.masked_fill(~live, float("-inf"))[rows]
    targets = torch.arange(batch, device=queries.device)[rows]
    return F.cross_entropy(logits, targets)


def _symmetric(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    formed = [term for term in (first, second) if term is not None]
    return sum(formed) / len(formed) if formed else None


def _negatives(batch: ContrastiveBatch, kind: str):
    embeds = getattr(batch, f"neg_{kind}_embeds")
    if embeds is None:
        return None, None
    mask = getattr(batch, f"neg_{kind}_mask").bool()
    if batch.neg_category_ids is not None:  # a "negative" of the row's own category is no negative
        mask = mask & (batch.neg_category_ids != batch.category_ids[:, None])
    return embeds, mask


def object_attribute_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """L_oa: image <-> its attribute description; the image side also sees the negative descriptions."""
    has_attribute = batch.attribute_mask.bool()
    everyone = torch.ones_like(has_attribute)
    neg_embeds, neg_mask = _negatives(batch, "attribute")
    image_to_text = info_nce(batch.image_embeds, batch.attribute_embeds, logit_scale, batch.category_ids,
                             everyone, has_attribute, neg_embeds, neg_mask)
    text_to_image = info_nce(batch.attribute_embeds, batch.image_embeds, logit_scale, batch.category_ids,
                             has_attribute, has_attribute)
    return _symmetric(image_to_text, text_to_image)


def attribute_category_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """L_ac: description <-> category name; each side sees the other side's hard negatives."""
    has_attribute = batch.attribute_mask.bool()
    everyone = torch.ones_like(has_attribute)
    neg_names, neg_name_mask = _negatives(batch, "category")
    neg_descriptions, neg_description_mask = _negatives(batch, "attribute")
    attribute_to_category = info_nce(batch.attribute_embeds, batch.category_embeds, logit_scale, batch.category_ids,
                                     has_attribute, everyone, neg_names, neg_name_mask)
    category_to_attribute = info_nce(batch.category_embeds, batch.attribute_embeds, logit_scale, batch.category_ids,
                                     everyone, has_attribute, neg_descriptions, neg_description_mask)
    return _symmetric(attribute_to_category, category_to_attribute)


def category_category_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """L_cc: each category name against the batch's other names and its hard negatives; target = itself."""
    everyone = torch.ones_like(batch.attribute_mask, dtype=torch.bool)
    neg_names, neg_mask = _negatives(batch, "category")
    return info_nce(batch.category_embeds, batch.category_embeds, logit_scale, batch.category_ids,
                    everyone, everyone, neg_names, neg_mask)


def without_hard_negatives(batch: ContrastiveBatch) -> ContrastiveBatch:
    """The same batch with in-batch negatives only (the "no hard negatives" ablation)."""
    empty = {f.name: None for f in fields(batch) if f.name.startswith("neg_")}
    return ContrastiveBatch(**{**{f.name: getattr(batch, f.name) for f in fields(batch)}, **empty})


def gather_batch(batch: ContrastiveBatch, world_size: int, with_grad: bool = True) -> ContrastiveBatch:
    """Concatenate every rank's batch (ranks may hold different batch sizes); embeddings keep gradients."""
    local_size = torch.tensor([batch.image_embeds.shape[0]], device=batch.image_embeds.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    sizes = [int(size.item()) for size in sizes]
    largest = max(sizes)

    def gather(tensor: Tensor | None, differentiable: bool) -> Tensor | None:
        if tensor is None:
            return None
        padded = F.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, largest - tensor.shape[0]])
        if differentiable:
            parts = dist_functional.all_gather(padded)
        else:
            parts = [torch.zeros_like(padded) for _ in range(world_size)]
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    gathered = {}
    for f in fields(batch):
        tensor = getattr(batch, f.name)
        differentiable = with_grad and tensor is not None and tensor.is_floating_point()
        gathered[f.name] = gather(tensor, differentiable)
    return ContrastiveBatch(**gathered)


class FinedeficsContrastiveLoss(nn.Module):
    """Weighted sum of the formed terms; terms that cannot be formed on a batch are listed in ``skipped``."""

    def __init__(self, weights=(0.5, 0.5, 0.5), gather_with_grad: bool = True, rank: int | None = None,
                 world_size: int | None = None, use_hard_negatives: bool = True):
        super().__init__()
        self.weights = dict(zip(TERMS, weights))
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.use_hard_negatives = use_hard_negatives

    def _world_size(self) -> int:
        if self.world_size is not None:
            return self.world_size
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def forward(self, batch: ContrastiveBatch, logit_scales: dict[str, Tensor]) -> ContrastiveOutput:
        if not self.use_hard_negatives:
            batch = without_hard_negatives(batch)
        world_size = self._world_size()
        if world_size > 1:
            batch = gather_batch(batch, world_size, with_grad=self.gather_with_grad)
        candidates = {
            "object_attribute": object_attribute_loss(batch, logit_scales["object_attribute"]),
            "attribute_category": attribute_category_loss(batch, logit_scales["attribute_category"]),
            "category_category": category_category_loss(batch, logit_scales["attribute_category"]),
        }
        terms = {name: term for name, term in candidates.items() if term is not None}
        skipped = [name for name, term in candidates.items() if term is None]
        # Zero with a gradient path, so a batch where nothing can be formed still backpropagates cleanly.
        loss = batch.image_embeds.float().sum() * 0.0 + sum(logit_scales.values()) * 0.0
        for name, term in terms.items():
            loss = loss + self.weights[name] * term
        return ContrastiveOutput(loss=loss, terms=terms, skipped=skipped)
