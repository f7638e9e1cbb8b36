"""Device-resident batches: images are converted uint8 -> float once and live on the device.

No DataLoader workers and no per-image Python: a training batch is an index_select, one batched
augmentation and a normalisation, all on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from bloodmnist.config import AugmentConfig
from bloodmnist.data.augment import augment


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 in [0,1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255).contiguous()


class Normalizer:
    """(x - mean) / std with the channel stats kept as device tensors."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class TrainBatches:
    """Shuffled, augmented training batches for one rank.

    Shuffling uses DistributedSampler (also for one process) so that the order depends only on
    (seed, epoch): a resumed run sees exactly the batches an uninterrupted one would.
    """

    images: torch.Tensor  # (N,3,H,W) float in [0,1] on device
    labels: torch.Tensor  # (N,) int64 on device
    batch_size: int  # per rank
    augment_cfg: AugmentConfig
    normalize: Normalizer
    seed: int
    rank: int = 0
    world_size: int = 1

    def __len__(self) -> int:
        per_rank = -(-len(self.labels) // self.world_size)
        return -(-per_rank // self.batch_size)

    def epoch(
        self, epoch: int, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(normalised augmented images, labels, their row indices in the training split)."""
        sampler = DistributedSampler(
            range(len(self.labels)),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=self.seed,
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=self.images.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = augment(self.images.index_select(0, idx), self.augment_cfg, gen)
            yield self.normalize(x), self.labels.index_select(0, idx), idx
