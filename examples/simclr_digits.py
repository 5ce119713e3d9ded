"""SimCLR on scikit-learn's bundled digits (8×8 images; no download), with the fused
``nt_xent_loss``.

    python examples/simclr_digits.py                    # fused loss (backend "auto")
    python examples/simclr_digits.py --backend torch    # the reference: the same curve

A small MLP encoder learns from two augmented views per image (random shifts, pixel noise,
random erasing); no labels are used in training. Before and after, a k-NN classifier on
the frozen embeddings (k = 5, cosine; augmented test images against clean training
images) measures what the representation learned. The run
is seeded, so the fused and the reference loss print the same curve up to float rounding.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import contrastive_kernels as ck

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    def tqdm(iterable, **_):
        return iterable


def load_digits():
    from sklearn.datasets import load_digits as sk_digits
    data = sk_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return images, torch.tensor(data.target)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift by up to one pixel, Gaussian pixel noise, and a random 3×3 erasure."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None]
    cols = (dx[:, None] + torch.arange(8))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], rows, cols]
    out = out + 0.1 * torch.randn(out.shape, generator=gen)
    ey = torch.randint(0, 6, (n,), generator=gen)
    ex = torch.randint(0, 6, (n,), generator=gen)
    yy, xx = torch.arange(8)[None, :, None], torch.arange(8)[None, None, :]
    erase = ((yy >= ey[:, None, None]) & (yy < ey[:, None, None] + 3)
             & (xx >= ex[:, None, None]) & (xx < ex[:, None, None] + 3))
    keep = torch.rand(n, generator=gen) < 0.5
    return torch.where(erase & keep[:, None, None], torch.zeros_like(out), out)


class Encoder(torch.nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256),
                                        torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(128, dim)  # the projection head of SimCLR

    def forward(self, x):
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x):
        return F.normalize(self.body(x), dim=1)


def knn_accuracy(model, images, labels, train_idx, test_idx, k: int = 5) -> float:
    """k-NN (cosine) of augmented test images against the clean training images: on
    clean digits even random features reach ~98%, so the probe asks for what contrastive
    training teaches — invariance to the shifts, noise and erasures."""
    test_views = augment(images[test_idx], torch.Generator().manual_seed(123))
    train_feats = model.features(images[train_idx])
    sims = model.features(test_views) @ train_feats.T
    votes = labels[train_idx][sims.topk(k, dim=1).indices]
    pred = torch.mode(votes, dim=1).values
    return (pred == labels[test_idx]).float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    images, labels = load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    train_idx, test_idx = perm[:1400], perm[1400:]
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(args.seed)
    before = knn_accuracy(model, images, labels, train_idx, test_idx)
    print(f"k-NN accuracy before training: {before:.3f}  (backend={args.backend})")
    start = time.perf_counter()
    losses = []
    for epoch in tqdm(range(args.epochs), desc="epochs"):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for i in range(0, len(order), args.batch):
            x = images[order[i:i + args.batch]]
            z1, z2 = model(augment(x, gen)), model(augment(x, gen))
            loss = ck.nt_xent_loss(z1, z2, temperature=args.temperature, backend=args.backend)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / -(-len(order) // args.batch))
        print(f"epoch {epoch:2d}  NT-Xent {losses[-1]:.4f}")
    after = knn_accuracy(model, images, labels, train_idx, test_idx)
    print(f"k-NN accuracy after training:  {after:.3f}  "
          f"({time.perf_counter() - start:.1f} s, backend={args.backend})")
    return before, after, losses


if __name__ == "__main__":
    main()
