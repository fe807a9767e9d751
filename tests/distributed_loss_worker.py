"""Worker for test_losses.py: the contrastive loss on 8 rows, in 1 process or split over 2 gloo ranks.

Usage: ``python distributed_loss_worker.py WORLD_SIZE OUT_DIR`` (MASTER_ADDR / MASTER_PORT set by the
caller). The row embeddings are parameters replicated on every rank (as model weights are under DDP);
each rank embeds only its own rows, and after backward the gradients are averaged across ranks
exactly as DDP does. Every scenario runs in the same process group; for each, the loss, the terms and
the averaged gradients go to OUT_DIR/world{N}.pt. In 1 process a scenario is the equivalent global
batch (what rank 1 lacks is masked there instead).
"""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from finedefics_training.losses import ContrastiveBatch, FinedeficsContrastiveLoss

ROWS, DIM, K = 8, 6, 2
EVEN, UNEVEN = [(0, 4), (4, 8)], [(0, 5), (5, 8)]
# name: (rank row ranges, what rank 1 does to its negatives, gather_with_grad)
SCENARIOS = {
    "even": (EVEN, None, True),
    "uneven": (UNEVEN, None, True),
    "ragged_negatives": (EVEN, "keep_one", True),  # rank 1 has K = 1, rank 0 K = 2
    "missing_negatives": (EVEN, "none", True),  # rank 1 has no negatives at all
    "gather_without_grad": (EVEN, None, False),
}


def make_parameters():
    generator = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(4, ROWS, DIM, generator=generator))  # image, attribute, category, offsets
    negatives = torch.nn.Parameter(torch.randn(ROWS, K, DIM, generator=generator))
    scales = {"object_attribute": torch.nn.Parameter(torch.tensor(10.0)),
              "attribute_category": torch.nn.Parameter(torch.tensor(12.0))}
    return table, negatives, scales


def global_fields(table, negatives):
    """The 8 rows: duplicates inside a rank (ids 0, 0) and across ranks (ids 3, 3), missing descriptions."""
    ids = torch.tensor([0, 1, 0, 3, 4, 5, 6, 3])
    neg_ids = torch.stack([(ids + 1) % 8, (ids + 2) % 8], dim=1)
    neg_ids[6, 0] = 6  # a negative of the row's own category
    neg_mask = torch.ones(ROWS, K, dtype=torch.bool)
    neg_mask[2, 1] = False
    return dict(
        image_embeds=F.normalize(table[0], dim=-1), attribute_embeds=F.normalize(table[1], dim=-1),
        attribute_mask=torch.tensor([True, True, False, True, True, True, True, False]),
        category_embeds=F.normalize(table[2], dim=-1), category_ids=ids,
        neg_attribute_embeds=F.normalize(negatives, dim=-1), neg_attribute_mask=neg_mask.clone(),
        neg_category_embeds=F.normalize(negatives + table[3, :, None], dim=-1), neg_category_mask=neg_mask.clone(),
        neg_category_ids=neg_ids,
    )


def scenario_batch(fields, splits, change, world_size, rank):
    second = slice(*splits[1])
    if world_size == 1:
        if change == "keep_one":
            fields["neg_attribute_mask"][second, 1:] = False
            fields["neg_category_mask"][second, 1:] = False
        elif change == "none":
            fields["neg_attribute_mask"][second] = False
            fields["neg_category_mask"][second] = False
        return ContrastiveBatch(**fields)
    rows = slice(*splits[rank])
    local = {name: tensor[rows] for name, tensor in fields.items()}
    negative_names = [name for name in local if name.startswith("neg_")]
    if rank == 1 and change == "keep_one":
        local.update({name: local[name][:, :1] for name in negative_names})
    elif rank == 1 and change == "none":
        local.update({name: None for name in negative_names})
    return ContrastiveBatch(**local)


def run_scenario(name, rank, world_size):
    splits, change, gather_with_grad = SCENARIOS[name]
    table, negatives, scales = make_parameters()
    batch = scenario_batch(global_fields(table, negatives), splits, change, world_size, rank)
    output = FinedeficsContrastiveLoss(gather_with_grad=gather_with_grad)(batch, scales)
    output.loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p)
             for p in (table, negatives, scales["object_attribute"], scales["attribute_category"])]
    if world_size > 1:  # DDP's gradient averaging
        for grad in grads:
            dist.all_reduce(grad)
            grad /= world_size
    return {
        "loss": output.loss.item(),
        "terms": {term: value.item() for term, value in output.terms.items()},
        "skipped": output.skipped,
        "embedding_grads": torch.cat([grads[0].flatten(), grads[1].flatten()]),
        "scale_grads": torch.stack([grads[2], grads[3]]),
    }


def run(rank, world_size, out_dir):
    if world_size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results = {name: run_scenario(name, rank, world_size) for name in SCENARIOS}
    if rank == 0:
        torch.save(results, f"{out_dir}/world{world_size}.pt")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    world_size, out_dir = int(sys.argv[1]), sys.argv[2]
    if world_size == 1:
        run(0, 1, out_dir)
    else:
        mp.spawn(run, args=(world_size, out_dir), nprocs=world_size)
