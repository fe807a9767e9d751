r"""The contrastive terms of Finedefics stage I (the paper's three attribute terms and an object-category
term for ablations), with hard negatives, duplicate masking and an open_clip-style cross-rank gather.

Notation: row ``i`` of a batch has an image embedding ``v_i``, its attribute-description embedding
``a_i`` (absent for some rows), its category-name embedding ``c_i``, and ``K`` hard negatives: names
``c_i^k`` and descriptions ``a_i^k`` of similar but wrong categories (the k-th description belongs to
the k-th name). All embeddings are L2-normalised, ``s = 1 / tau`` is a learnable logit scale, and

    InfoNCE(q_i, {keys}, target) = -log( exp(s q_i.target) / sum_{k in keys} exp(s q_i.k) )

- object-attribute (image <-> description; the image side also sees the row's negative descriptions):

      L_oa = 1/2 [ mean_i InfoNCE(v_i, {a_j} u {a_i^k}, a_i) + mean_i InfoNCE(a_i, {v_j}, v_i) ]

- attribute-category (description <-> name; each side sees the other side's hard negatives):

      L_ac = 1/2 [ mean_i InfoNCE(a_i, {c_j} u {c_i^k}, c_i) + mean_i InfoNCE(c_i, {a_j} u {a_i^k}, a_i) ]

- category-category (each name against the batch's other names and its negatives; the target is the
  row's OWN category, not column 0 as in the reference code):

      L_cc = mean_i InfoNCE(c_i, {c_j} u {c_i^k}, c_i)

- object-category (image <-> name, no description involved; the image side also sees the row's negative
  names). Not one of the paper's terms (its weight defaults to 0): the "without attribute descriptions"
  ablation aligns images with names directly through it:

      L_oc = 1/2 [ mean_i InfoNCE(v_i, {c_j} u {c_i^k}, c_i) + mean_i InfoNCE(c_i, {v_j}, v_i) ]

The terms are a registry, ``CONTRASTIVE_TERMS`` (name -> the scale it uses, whether it needs descriptions,
its pair builder), and weights are given by name: ``L = sum_t w_t L_t`` over the terms of non-zero weight;
a term of weight 0 is not computed. ``TERMS`` are the paper's three (weights 0.5 each).

The means run over the rows whose target exists (a row without a description has no ``a_i``).
Masking (logit -inf before the softmax):
- duplicates: for ``j != i`` with the same category id (two images of one species) column ``j`` is
  masked out of row ``i``, in every term and both directions: a sibling is not a negative;
- a hard negative whose category id equals the row's own id, padded negatives, absent descriptions.
A row whose only live column is its target contributes a finite 0. A direction with no live
non-target column anywhere in the batch "cannot be formed": a symmetric term then uses its other
direction alone, and a term with neither is skipped and reported, never NaN. ``L_oa`` and ``L_oc``
(image-text) use the object-attribute scale; ``L_ac`` and ``L_cc`` (both text-text) share the
attribute-category scale.
Everything is computed in float32 whatever the input dtype. The scales are clamped by the model
that owns them; the loss takes them as given.

Multi-process: every tensor is gathered from all ranks (embeddings with gradients through
``torch.distributed.nn.functional.all_gather``, ids and masks without; ranks may hold different batch
sizes and numbers of negatives), so each rank computes the same loss over the global batch and sees
every negative. The gather's backward sums the gradients of every rank's copy of the loss into the
local embeddings (``world_size`` times the single-process gradient); DDP's gradient averaging divides
by ``world_size``, so parameters get exactly the single-process gradient of the global batch. With
``gather_with_grad=False`` only a rank's own rows carry gradient (open_clip's behaviour): after
averaging, embeddings get ``1 / world_size`` of that gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
import torch.nn.functional as F
from torch import Tensor, nn

# The paper's three terms, in the order of a positional weights tuple (``weights=(w_oa, w_ac, w_cc)``).
TERMS = ("object_attribute", "attribute_category", "category_category")
NEGATIVE_FIELDS = {"attribute": ("neg_attribute_embeds", "neg_attribute_mask"),
                   "category": ("neg_category_embeds", "neg_category_mask", "neg_category_ids")}


@dataclass
class ContrastiveBatch:
    """One step's embeddings for the contrastive terms (shapes are checked on construction)."""

    image_embeds: Tensor  # (B, D) L2-normalised
    attribute_embeds: Tensor  # (B, D)
    attribute_mask: Tensor  # (B,) bool, False where the row has no description
    category_embeds: Tensor  # (B, D)
    category_ids: Tensor  # (B,) int64; equal ids = same category
    neg_attribute_embeds: Tensor | None = None  # (B, K, D)
    neg_attribute_mask: Tensor | None = None  # (B, K) bool, False = padding
    neg_category_embeds: Tensor | None = None  # (B, K, D)
    neg_category_mask: Tensor | None = None  # (B, K) bool
    neg_category_ids: Tensor | None = None  # (B, K) int64, -1 = unknown

    def __post_init__(self):
        for embeds, mask, *_ in NEGATIVE_FIELDS.values():
            if (getattr(self, embeds) is None) != (getattr(self, mask) is None):
                raise ValueError(f"ContrastiveBatch.{embeds} and .{mask} must be given together")
        if self.image_embeds.dim() != 2:
            raise ValueError(f"ContrastiveBatch.image_embeds: expected shape (B, D), "
                             f"got {tuple(self.image_embeds.shape)}")
        rows, dim = self.image_embeds.shape
        k = next((getattr(self, name).shape[1] for name in ("neg_attribute_mask", "neg_category_mask")
                  if getattr(self, name) is not None and getattr(self, name).dim() == 2), None)
        expected = {"image_embeds": (rows, dim), "attribute_embeds": (rows, dim), "attribute_mask": (rows,),
                    "category_embeds": (rows, dim), "category_ids": (rows,),
                    "neg_attribute_embeds": (rows, k, dim), "neg_attribute_mask": (rows, k),
                    "neg_category_embeds": (rows, k, dim), "neg_category_mask": (rows, k),
                    "neg_category_ids": (rows, k)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor is not None and (tensor.dim() != len(shape) or tuple(tensor.shape) != shape):
                raise ValueError(f"ContrastiveBatch.{name}: expected shape {shape} (B, D from image_embeds, K from "
                                 f"the negative masks), got {tuple(tensor.shape)}")


@dataclass
class ContrastiveTexts:
    """The contrastive part of a stage I batch: the one place its layout is written.

    ``FinedeficsDataCollator`` produces it and puts its fields into the batch as columns (``as_batch_columns``:
    Trainer moves a batch's tensors to the device, so the batch stays a dict); ``FinedeficsTrainer`` takes it back
    out (``pop_from``), hands the model its inputs (``model_inputs``: the texts and, for the families that embed
    images from image-summary rows, those rows), and turns the model's embeddings into the loss's
    ``ContrastiveBatch`` (``embed``). Every distinct text of the step is one row of ``contrastive_input_ids``;
    the index fields point each batch row at its texts (-1: none).
    """

    contrastive_input_ids: Tensor  # (T, L) the step's distinct texts, right-padded, each ending in the summary token
    contrastive_attention_mask: Tensor  # (T, L)
    attribute_index: Tensor  # (B,) the row's description, -1 where it has none
    category_index: Tensor  # (B,) the row's category name
    category_ids: Tensor  # (B,) stable id of the row's category (equal ids = same category)
    neg_attribute_index: Tensor  # (B, K) the hard negatives' descriptions, -1 = padding or none
    neg_category_index: Tensor  # (B, K) the hard negatives' names, -1 = padding
    neg_category_ids: Tensor  # (B, K) their stable ids
    summary_input_ids: Tensor | None = None  # (B, S) image-summary rows of the batch's images (not Idefics2)
    summary_attention_mask: Tensor | None = None  # (B, S)

    MODEL_INPUTS = ("contrastive_input_ids", "contrastive_attention_mask", "summary_input_ids",
                    "summary_attention_mask")

    def as_batch_columns(self) -> dict[str, Tensor]:
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name) is not None}

    @classmethod
    def pop_from(cls, batch: dict) -> ContrastiveTexts | None:
        """Take the contrastive columns out of a collated batch (which keeps the LM inputs); None without texts."""
        values = {item.name: batch.pop(item.name) for item in fields(cls) if item.name in batch}
        return cls(**values) if "contrastive_input_ids" in values else None

    @classmethod
    def from_batch(cls, batch: dict) -> ContrastiveTexts:
        """The contrastive columns of a collated batch, leaving the batch as it is."""
        return cls.pop_from(dict(batch))

    def model_inputs(self) -> dict[str, Tensor]:
        """What the model's ``forward`` takes to embed the texts (and the image-summary rows) in one pass."""
        return {name: getattr(self, name) for name in self.MODEL_INPUTS if getattr(self, name) is not None}

    def embed(self, image_embeds: Tensor, text_embeds: Tensor) -> ContrastiveBatch:
        """The loss's batch: the step's text embeddings (one per distinct text) indexed into per-row tensors."""

        def pick(index: Tensor) -> tuple[Tensor, Tensor]:
            index = index.to(text_embeds.device)
            return text_embeds[index.clamp(min=0)], index >= 0

        attribute_embeds, attribute_mask = pick(self.attribute_index)
        category_embeds, _ = pick(self.category_index)
        neg_attribute_embeds, neg_attribute_mask = pick(self.neg_attribute_index)
        neg_category_embeds, neg_category_mask = pick(self.neg_category_index)
        has_negatives = self.neg_category_index.shape[1] > 0
        return ContrastiveBatch(
            image_embeds=image_embeds,
            attribute_embeds=attribute_embeds,
            attribute_mask=attribute_mask,
            category_embeds=category_embeds,
            category_ids=self.category_ids.to(text_embeds.device),
            neg_attribute_embeds=neg_attribute_embeds if has_negatives else None,
            neg_attribute_mask=neg_attribute_mask if has_negatives else None,
            neg_category_embeds=neg_category_embeds if has_negatives else None,
            neg_category_mask=neg_category_mask if has_negatives else None,
            neg_category_ids=self.neg_category_ids.to(text_embeds.device) if has_negatives else None,
        )


@dataclass
class ContrastiveOutput:
    loss: Tensor  # weighted sum of the formed terms (a zero with a gradient path if none)
    terms: dict[str, Tensor] = field(default_factory=dict)  # formed, unweighted terms
    skipped: list[str] = field(default_factory=list)  # terms that could not be formed on this batch


def info_nce(queries: Tensor, keys: Tensor, logit_scale: Tensor, ids: Tensor, *, query_valid: Tensor,
             key_valid: Tensor, extra_keys: Tensor | None = None, extra_mask: Tensor | None = None) -> Tensor | None:
    """``mean_i -log softmax_j(s q_i.k_j)[i]`` over rows whose query and target exist; None if it cannot be formed.

    Columns are ``keys`` (target ``keys[i]`` for row ``i``) then ``extra_keys[i]`` ``(B, K, D)``. Masked
    (-inf): invalid keys, in-batch ``j != i`` with ``ids[j] == ids[i]`` (duplicates), extras with
    ``extra_mask`` False. It cannot be formed when no such row has a live non-target column.
    """
    queries, keys, logit_scale = queries.float(), keys.float(), logit_scale.float()
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
    # Every kept row keeps its own target column live, so logsumexp stays finite.
    logits = logits.masked_fill(~live, float("-inf"))[rows]
    return F.cross_entropy(logits, torch.arange(batch, device=queries.device)[rows])


def _symmetric(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    formed = [term for term in (first, second) if term is not None]
    return sum(formed) / len(formed) if formed else None


def _negatives(batch: ContrastiveBatch, kind: str) -> tuple[Tensor | None, Tensor | None]:
    embeds = getattr(batch, f"neg_{kind}_embeds")
    if embeds is None:
        return None, None
    mask = getattr(batch, f"neg_{kind}_mask").bool()
    # A "negative" of the row's own category is no negative; the k-th description belongs to the k-th
    # name, so the same ids mask both kinds.
    if batch.neg_category_ids is not None:
        mask = mask & (batch.neg_category_ids != batch.category_ids[:, None])
    return embeds, mask


def object_attribute_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """``L_oa``: image <-> its attribute description; the image side also sees the negative descriptions."""
    has_attribute = batch.attribute_mask.bool()
    everyone = torch.ones_like(has_attribute)
    neg_embeds, neg_mask = _negatives(batch, "attribute")
    image_to_text = info_nce(batch.image_embeds, batch.attribute_embeds, logit_scale, batch.category_ids,
                             query_valid=everyone, key_valid=has_attribute, extra_keys=neg_embeds, extra_mask=neg_mask)
    # Images of rows without a description are still negatives for the other descriptions.
    text_to_image = info_nce(batch.attribute_embeds, batch.image_embeds, logit_scale, batch.category_ids,
                             query_valid=has_attribute, key_valid=everyone)
    return _symmetric(image_to_text, text_to_image)


def attribute_category_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """``L_ac``: description <-> category name; each side sees the other side's hard negatives."""
    has_attribute = batch.attribute_mask.bool()
    everyone = torch.ones_like(has_attribute)
    neg_names, neg_name_mask = _negatives(batch, "category")
    neg_descriptions, neg_description_mask = _negatives(batch, "attribute")
    attribute_to_category = info_nce(batch.attribute_embeds, batch.category_embeds, logit_scale, batch.category_ids,
                                     query_valid=has_attribute, key_valid=everyone,
                                     extra_keys=neg_names, extra_mask=neg_name_mask)
    category_to_attribute = info_nce(batch.category_embeds, batch.attribute_embeds, logit_scale, batch.category_ids,
                                     query_valid=everyone, key_valid=has_attribute,
                                     extra_keys=neg_descriptions, extra_mask=neg_description_mask)
    return _symmetric(attribute_to_category, category_to_attribute)


def category_category_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """``L_cc``: each category name against the batch's other names and its hard negatives; target = itself."""
    everyone = torch.ones_like(batch.attribute_mask, dtype=torch.bool)
    neg_names, neg_mask = _negatives(batch, "category")
    return info_nce(batch.category_embeds, batch.category_embeds, logit_scale, batch.category_ids,
                    query_valid=everyone, key_valid=everyone, extra_keys=neg_names, extra_mask=neg_mask)


def object_category_loss(batch: ContrastiveBatch, logit_scale: Tensor) -> Tensor | None:
    """``L_oc``: image <-> its category name; the image side also sees the row's negative names."""
    everyone = torch.ones_like(batch.attribute_mask, dtype=torch.bool)
    neg_names, neg_mask = _negatives(batch, "category")
    image_to_name = info_nce(batch.image_embeds, batch.category_embeds, logit_scale, batch.category_ids,
                             query_valid=everyone, key_valid=everyone, extra_keys=neg_names, extra_mask=neg_mask)
    name_to_image = info_nce(batch.category_embeds, batch.image_embeds, logit_scale, batch.category_ids,
                             query_valid=everyone, key_valid=everyone)
    return _symmetric(image_to_name, name_to_image)


@dataclass(frozen=True)
class ContrastiveTerm:
    """One named term: the logit scale it takes, whether it needs attribute descriptions, and its pair builder
    (``loss(batch, logit_scale) -> Tensor | None``, None when the batch cannot form it)."""

    name: str
    scale: str  # key of ``logit_scales``: "object_attribute" (image-text) or "attribute_category" (text-text)
    needs_descriptions: bool
    loss: Callable[[ContrastiveBatch, Tensor], Tensor | None]


CONTRASTIVE_TERMS: dict[str, ContrastiveTerm] = {term.name: term for term in (
    ContrastiveTerm("object_attribute", "object_attribute", True, object_attribute_loss),
    ContrastiveTerm("attribute_category", "attribute_category", True, attribute_category_loss),
    ContrastiveTerm("category_category", "attribute_category", False, category_category_loss),
    ContrastiveTerm("object_category", "object_attribute", False, object_category_loss),
)}


def term_weights(weights) -> dict[str, float]:
    """``{name: weight}`` from a mapping (unknown names are an error; absent terms weigh 0) or, as before the
    registry, a sequence of the weights of ``TERMS`` in their order."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(CONTRASTIVE_TERMS))
        if unknown:
            raise ValueError(f"weights name unknown contrastive term(s) {unknown}; "
                             f"known: {', '.join(CONTRASTIVE_TERMS)}")
        named = {name: float(weight) for name, weight in weights.items()}
    else:
        weights = tuple(weights)
        if len(weights) != len(TERMS):
            raise ValueError(f"weights must give {len(TERMS)} values for {', '.join(TERMS)} (or be a mapping from "
                             f"term names), got {weights}")
        named = dict(zip(TERMS, map(float, weights)))
    return {name: named.get(name, 0.0) for name in CONTRASTIVE_TERMS}


def without_hard_negatives(batch: ContrastiveBatch) -> ContrastiveBatch:
    """The same batch with in-batch negatives only (the "no hard negatives" ablation)."""
    return replace(batch, **{f.name: None for f in fields(batch) if f.name.startswith("neg_")})


def _pad_dim(tensor: Tensor, dim: int, size: int, value) -> Tensor:
    pad = [0, 0] * (tensor.dim() - dim - 1) + [0, size - tensor.shape[dim]]
    return F.pad(tensor, pad, value=value)


def _with_negatives_padded(batch: ContrastiveBatch, k: int, present: dict[str, bool]) -> ContrastiveBatch:
    """Negatives padded to ``k`` columns, or all-padding ones where this rank has none but another rank has."""
    rows, dim = batch.image_embeds.shape
    padded = {}
    for kind, names in NEGATIVE_FIELDS.items():
        if not present[kind]:
            continue
        embeds = getattr(batch, names[0])
        width = 0 if embeds is None else embeds.shape[1]
        blanks = (torch.zeros(rows, width, dim), torch.zeros(rows, width, dtype=torch.bool),
                  torch.full((rows, width), -1, dtype=torch.long))
        for name, blank, fill in zip(names, blanks, (0.0, False, -1)):
            tensor = getattr(batch, name)
            tensor = blank.to(batch.image_embeds.device) if tensor is None else tensor
            padded[name] = _pad_dim(tensor, 1, k, fill)
    return replace(batch, **padded)


def _wire_dtype(name: str, tensor: Tensor) -> Tensor:
    """One dtype per field on every rank (all_gather needs it): float32 embeddings, bool masks, int64 ids."""
    if tensor.is_floating_point():
        return tensor.float()
    return tensor.bool() if name.endswith("mask") else tensor.long()


def _all_gather_rows(tensor: Tensor, sizes: list[int], rank: int, differentiable: bool) -> Tensor:
    padded = _pad_dim(tensor, 0, max(sizes), 0).contiguous()
    if differentiable:
        if not padded.requires_grad:
            # Every rank must join the gather's backward collective, even for a tensor without a graph here.
            padded = padded.detach().requires_grad_()
        # Backward sums every rank's gradient into the local rows (open_clip's gather; torch 2.13 marks it
        # deprecated in favour of the private _functional_collectives, but it is the public differentiable one).
        parts = dist_functional.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        parts[rank] = padded  # this rank's own rows keep their gradient (open_clip's non-grad gather)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def gather_batch(batch: ContrastiveBatch, rank: int, world_size: int, with_grad: bool = True) -> ContrastiveBatch:
    """The global batch: every rank's rows concatenated in rank order, negatives padded to a common ``K``.

    Floating tensors are gathered as float32 and, when ``with_grad`` and grad mode are on, with gradients.
    """
    def k_of(embeds):
        return -1 if embeds is None else embeds.shape[1]

    local_meta = torch.tensor([batch.image_embeds.shape[0], k_of(batch.neg_attribute_embeds),
                               k_of(batch.neg_category_embeds)], device=batch.image_embeds.device)
    metas = [torch.zeros_like(local_meta) for _ in range(world_size)]
    dist.all_gather(metas, local_meta)
    metas = torch.stack(metas).tolist()
    sizes = [meta[0] for meta in metas]
    present = {"attribute": any(meta[1] >= 0 for meta in metas), "category": any(meta[2] >= 0 for meta in metas)}
    k = max([0] + [meta[i] for meta in metas for i in (1, 2)])
    local = _with_negatives_padded(batch, k, present)
    differentiable = with_grad and torch.is_grad_enabled()
    gathered = {}
    for f in fields(local):
        tensor = getattr(local, f.name)
        if tensor is not None:
            tensor = _wire_dtype(f.name, tensor)
            tensor = _all_gather_rows(tensor, sizes, rank, differentiable and tensor.is_floating_point())
        gathered[f.name] = tensor
    return ContrastiveBatch(**gathered)


class FinedeficsContrastiveLoss(nn.Module):
    """``sum_t w_t L_t`` over the terms of non-zero weight, on the (gathered) batch; terms that cannot be formed
    are skipped.

    Args:
        weights: ``{term name: weight}`` over ``CONTRASTIVE_TERMS`` (absent terms weigh 0), or the weights of
            ``TERMS`` in order, ``(w_oa, w_ac, w_cc)``; the paper uses 0.5 each. A term of weight 0 is not
            computed (nor reported).
        gather_with_grad: gather other ranks' embeddings with gradients (see the module docstring).
        rank, world_size: default to ``torch.distributed``'s when it is initialised, else 0 and 1.
        use_hard_negatives: False drops the hard-negative columns (in-batch negatives only).

    ``forward(batch, logit_scales)`` takes ``logit_scales[term.scale]`` for each computed term
    (``"object_attribute"`` for ``L_oa`` and ``L_oc``, ``"attribute_category"`` for ``L_ac`` and ``L_cc``);
    it returns a ``ContrastiveOutput``.
    """

    def __init__(self, weights=(0.5, 0.5, 0.5), gather_with_grad: bool = True, rank: int | None = None,
                 world_size: int | None = None, use_hard_negatives: bool = True):
        super().__init__()
        self.weights = term_weights(weights)
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.use_hard_negatives = use_hard_negatives

    @property
    def active_terms(self) -> list[str]:
        """The terms this loss computes: those of non-zero weight, in registry order."""
        return [name for name, weight in self.weights.items() if weight != 0]

    def _distributed(self) -> tuple[int, int]:
        initialised = dist.is_available() and dist.is_initialized()
        rank = self.rank if self.rank is not None else (dist.get_rank() if initialised else 0)
        world_size = self.world_size if self.world_size is not None else (dist.get_world_size() if initialised else 1)
        return rank, world_size

    def forward(self, batch: ContrastiveBatch, logit_scales: dict[str, Tensor]) -> ContrastiveOutput:
        missing = {CONTRASTIVE_TERMS[name].scale for name in self.active_terms} - set(logit_scales)
        if missing:
            raise ValueError(f"logit_scales lacks {sorted(missing)}; got keys {sorted(logit_scales)}")
        if not self.use_hard_negatives:
            batch = without_hard_negatives(batch)
        rank, world_size = self._distributed()
        if world_size > 1:
            batch = gather_batch(batch, rank, world_size, with_grad=self.gather_with_grad)
        candidates = {name: CONTRASTIVE_TERMS[name].loss(batch, logit_scales[CONTRASTIVE_TERMS[name].scale])
                      for name in self.active_terms}
        terms = {name: term for name, term in candidates.items() if term is not None}
        skipped = [name for name, term in candidates.items() if term is None]
        # A zero that reaches every input, so a batch where a term cannot be formed still backpropagates into
        # every embedding and scale (DDP expects the same parameters to get gradients on every step).
        inputs = [getattr(batch, f.name) for f in fields(batch)] + list(logit_scales.values())
        loss = sum(tensor.float().sum() for tensor in inputs
                   if tensor is not None and tensor.is_floating_point()) * 0.0
        for name, term in terms.items():
            loss = loss + self.weights[name] * term
        return ContrastiveOutput(loss=loss, terms=terms, skipped=skipped)
