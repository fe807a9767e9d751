"""Data-parallel work over the processes of an ``accelerate launch`` / ``torchrun`` launch: shard, merge in order.

    from finedefics_data.sharding import DataParallel

    processes = DataParallel()               # one process: world size 1, nothing is initialised
    mine = processes.shard(batches)          # this rank's contiguous slice (empty when there are more ranks)
    results = processes.merge([work(b) for b in mine])   # every rank's results, in the original order
    if processes.is_main:
        write(results)                       # only rank 0 writes files

The one shard/merge mechanism of the package (``finedefics eval`` and ``finedefics data describe`` use it). Ranks get
contiguous slices (accelerate's ``PartialState.split_between_processes``: the first ``len % world`` ranks take one
item more, a rank beyond the last item takes none), and ``merge`` concatenates the ranks' results in rank order
(accelerate's ``gather_object``, an all-gather: every rank gets the whole list), so the merged list is what one
process working through all items would have produced. Sharding whole batches, not examples, keeps every batch's
composition (its padding included) the same as in one process.

A process outside a launch (no ``WORLD_SIZE`` above 1) never touches ``torch.distributed``. Under a launch the
process group is accelerate's: nccl on GPUs, gloo when ``cpu`` (default: when no GPU is present).
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def launched_world_size() -> int:
    """The number of processes this one was launched among (``WORLD_SIZE``; 1 outside a launch)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class DataParallel:
    """The processes of the launch this process belongs to (or this process alone).

    Args:
        cpu: under a launch, use gloo and the CPU even where GPUs are present (default: only when none is).
    """

    def __init__(self, cpu: bool | None = None):
        self.state = None
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        if launched_world_size() > 1:
            import torch
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)
            if self.state.num_processes > 1:
                self.rank, self.world_size = self.state.process_index, self.state.num_processes
                self.local_rank = self.state.local_process_index
            else:
                self.state = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints results."""
        return self.rank == 0

    @property
    def device(self):
        """This rank's device under a launch (``cuda:LOCAL_RANK`` or ``cpu``); None in a single process."""
        return self.state.device if self.state is not None else None

    def bounds(self, length: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's slice of ``length`` items (accelerate's split, computed the same way)."""
        per_rank, extra = divmod(length, self.world_size)
        start = self.rank * per_rank + min(self.rank, extra)
        return start, start + per_rank + (1 if self.rank < extra else 0)

    def shard(self, items: Sequence) -> list:
        """This rank's contiguous slice of ``items``; the slices in rank order are ``items``."""
        items = list(items)
        if self.state is None:
            return items
        with self.state.split_between_processes(items) as part:
            return list(part)

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.state is None:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def merge(self, part: Sequence) -> list:
        """The ranks' ``part`` lists concatenated in rank order, on every rank (the inverse of :meth:`shard`)."""
        return [item for rank_part in self.gather(list(part)) for item in rank_part]

    def wait(self) -> None:
        """Wait for every rank (a barrier); nothing in a single process."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size})"


__all__ = ["DataParallel", "launched_world_size"]
