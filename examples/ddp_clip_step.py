"""A CLIP-style training step with DDP and the distributed fused loss.

CPU (gloo), two processes on this machine:

    torchrun --standalone --nproc_per_node=2 examples/ddp_clip_step.py

GPUs (NCCL), one process per GPU:

    torchrun --standalone --nproc_per_node=8 examples/ddp_clip_step.py --backend nccl

Each rank embeds its own slice of the batch; ``ClipLoss(local_loss=True,
gather_with_grad=True, rank, world_size)`` (open_clip's arguments) scores the rank's rows
against the global batch on the tiled kernels, and DDP's gradient averaging then gives
every rank the exact global gradient. ``--dist-mode ring`` passes key blocks between
neighbours instead of gathering them (no rank holds the global features).
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import contrastive_kernels as ck


class TwoTowers(torch.nn.Module):
    """Stand-ins for the image and text encoders, and open_clip's learnable scale."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.image = torch.nn.Linear(d_in, d_out)
        self.text = torch.nn.Linear(d_in, d_out)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07)

    def forward(self, images, texts):
        return self.image(images), self.text(texts), self.logit_scale.exp()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--dist-mode", default="gather", choices=["gather", "ring"])
    ap.add_argument("--batch-per-rank", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DDP(TwoTowers(64, 32).to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = ck.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world,
                          normalize=True, dist_mode=args.dist_mode)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(args.steps):
        images = torch.randn(args.batch_per_rank, 64, generator=gen).to(device)
        texts = images + 0.1 * torch.randn(args.batch_per_rank, 64, generator=gen).to(device)
        loss = loss_fn(*model(images, texts))
        opt.zero_grad()
        loss.backward()  # DDP averages: the exact gradient of the global-batch loss
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step}: global-batch CLIP loss {mean.item() / world:.4f} "
                  f"({world} ranks × {args.batch_per_rank} rows, {args.dist_mode})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
