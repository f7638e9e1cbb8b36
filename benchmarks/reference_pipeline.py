"""A faithful re-creation of the reference script's data path, for side-by-side timing only.

Per-image PIL transforms in a 4-worker DataLoader, fp32, NCHW; MixUp on the normalised batch and
`loss.item()` every step; evaluation through the same kind of DataLoader; TTA as a per-image loop
with batch 1 (seven views, each its own forward pass), including the reference's quirks (noise
from the global RNG, clamp of the already-normalised tensor). Nothing in the package uses this.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

WORKERS = 4  # the reference's DataLoader setting


class ImageSet(Dataset):
    """uint8 (N,H,W,3) images + labels, one PIL image per item, as the reference's dataset."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def train_transform(size: int, mean, std) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.9, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(10),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(mean, std) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def train_loader(images, labels, batch_size: int, mean, std, seed: int) -> DataLoader:
    ds = ImageSet(images, labels, train_transform(images.shape[1], mean, std))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=WORKERS, generator=gen)


class RunningLoader:
    """A started epoch of the reference DataLoader: workers up, first batch in hand.

    Worker start-up is paid once per epoch (94 steps) by the reference; keeping it out of a
    few timed steps avoids charging it to them. Close it before timing anything else, so idle
    workers do not compete with the next measurement.
    """

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.it = iter(loader)
        self.first = next(self.it)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self.it, "_workers", [])]

    def next(self):
        if self.first is not None:
            batch, self.first = self.first, None
            return batch
        batch = next(self.it, None)
        if batch is None:  # the epoch ended: start the next (rare in a benchmark)
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch

    def close(self) -> None:
        self.it = None  # drops the iterator, which shuts its workers down


def train_steps(
    model: nn.Module,
    running: RunningLoader,
    optimizer: torch.optim.Optimizer,
    steps: int,
    device: torch.device,
    alpha: float = 0.001,
) -> int:
    """`steps` reference training steps; returns the number of images trained on."""
    model.train()
    seen = 0
    for _ in range(steps):
        x, y = (t.to(device) for t in running.next())
        lam = float(np.random.beta(alpha, alpha))
        idx = torch.randperm(x.size(0), device=device)
        out = model(lam * x + (1 - lam) * x[idx])
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _ = loss.item()  # the reference logs a running loss every step
        seen += len(y)
    return seen


@torch.no_grad()
def evaluate(model: nn.Module, images, labels, mean, std, device, batch_size: int = 128):
    """Plain evaluation through a worker DataLoader; returns the predicted classes."""
    model.eval()
    ds = ImageSet(images, labels, eval_transform(mean, std))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=WORKERS)
    preds = [model(x.to(device)).argmax(1).cpu() for x, _ in loader]
    return torch.cat(preds).numpy()


def tta_views():
    """The reference's seven views on a normalised (1,3,H,W) tensor."""
    blur = T.GaussianBlur(kernel_size=3, sigma=0.4)
    return [
        lambda x: x,
        TF.hflip,
        lambda x: TF.affine(x, angle=0.0, translate=[2, 2], scale=1.0, shear=[0.0]),
        lambda x: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.1, shear=[0.0]),
        blur,
        lambda x: torch.clamp(x + torch.randn_like(x) * 0.01, 0, 1),  # the reference's quirk
        TF.vflip,
    ]


@torch.no_grad()
def tta_per_image(model: nn.Module, images, labels, mean, std, device) -> np.ndarray:
    """The reference TTA: batch-1 DataLoader, one forward pass per view and image."""
    model.eval()
    ds = ImageSet(images, labels, eval_transform(mean, std))
    loader = DataLoader(ds, batch_size=1, shuffle=False)
    views = tta_views()
    out = []
    for x, _ in loader:
        x = x.to(device)
        probs = sum(torch.softmax(model(view(x)), dim=1) for view in views) / len(views)
        out.append(probs.cpu())
    return torch.cat(out).numpy()
