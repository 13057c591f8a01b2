"""The CNN of cnn_train.py under DistributedDataParallel (gloo), one process per rank, each on
its own data; run by torchrun. An ordinary script: it knows nothing of actmem. Each rank writes
its losses, gradients, parameters and buffers to --out with .rankN appended."""

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnn_train import Block


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.Sequential(*[Block(16) for _ in range(4)]),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)  # each rank's data and dropout masks its own
    losses = []
    for _ in range(args.steps):
        x = torch.randn(8, 3, 16, 16)
        y = torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    torch.save(
        {
            "losses": torch.stack(losses),
            "grads": {n: p.grad for n, p in model.named_parameters()},
            "params": dict(model.named_parameters()),
            "buffers": dict(model.named_buffers()),
        },
        f"{args.out}.rank{rank}",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
