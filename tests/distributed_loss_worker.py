"""Worker for test_losses.py: the contrastive loss on 8 rows, in 1 process or split 5 + 3 over 2 gloo ranks.

The row embeddings are a parameter replicated on every rank (as model weights are under DDP); each
rank embeds only its own rows, and after backward the gradients are averaged across ranks exactly as
DDP does. Saves the loss, the terms and the averaged gradients to OUT/world{N}.pt.
"""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from finedefics_training.losses import ContrastiveBatch, FinedeficsContrastiveLoss

ROWS, DIM, K = 8, 6, 2
SPLITS = {1: [(0, 8)], 2: [(0, 5), (5, 8)]}


def make_parameters():
    generator = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(4, ROWS, DIM, generator=generator))  # image, attribute, category, negatives
    negatives = torch.nn.Parameter(torch.randn(ROWS, K, DIM, generator=generator))
    scales = {"object_attribute": torch.nn.Parameter(torch.tensor(10.0)),
              "attribute_category": torch.nn.Parameter(torch.tensor(12.0))}
    return table, negatives, scales


def local_batch(table, negatives, start, stop):
    rows = slice(start, stop)
    ids = torch.tensor([0, 1, 2, 3, 0, 5, 6, 3])  # duplicates inside a rank and across ranks
    attribute_mask = torch.tensor([True, True, False, True, True, True, True, False])
    neg_ids = torch.stack([(ids + 1) % 8, (ids + 2) % 8], dim=1)
    neg_mask = torch.ones(ROWS, K, dtype=torch.bool)
    neg_mask[2, 1] = False
    normal = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    return ContrastiveBatch(
        image_embeds=normal(table[0, rows]), attribute_embeds=normal(table[1, rows]),
        attribute_mask=attribute_mask[rows], category_embeds=normal(table[2, rows]), category_ids=ids[rows],
        neg_attribute_embeds=normal(negatives[rows]), neg_attribute_mask=neg_mask[rows],
        neg_category_embeds=normal(negatives[rows] + table[3, rows, None]), neg_category_mask=neg_mask[rows],
        neg_category_ids=neg_ids[rows],
    )


def run(rank, world_size, out_dir):
    if world_size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    table, negatives, scales = make_parameters()
    start, stop = SPLITS[world_size][rank]
    output = FinedeficsContrastiveLoss()(local_batch(table, negatives, start, stop), scales)
    output.loss.backward()
    grads = [table.grad, negatives.grad, scales["object_attribute"].grad, scales["attribute_category"].grad]
    if world_size > 1:  # DDP's gradient averaging
        for grad in grads:
            dist.all_reduce(grad)
            grad /= world_size
    if rank == 0:
        torch.save({
            "loss": output.loss.item(),
            "terms": {name: term.item() for name, term in output.terms.items()},
            "embedding_grads": torch.cat([table.grad.flatten(), negatives.grad.flatten()]),
            "scale_grads": torch.stack([grads[2], grads[3]]),
        }, f"{out_dir}/world{world_size}.pt")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    world_size, out_dir = int(sys.argv[1]), sys.argv[2]
    if world_size == 1:
        run(0, 1, out_dir)
    else:
        mp.spawn(run, args=(world_size, out_dir), nprocs=world_size)
