"""Trains a small convolutional network on random CIFAR-sized data for a few steps.

An ordinary PyTorch training script with nothing of actmem in it: scripts/gpu-check.sh runs it
under LD_PRELOAD=libactmem_preload.so with PYTORCH_NO_CUDA_MEMORY_CACHING=1, ACTMEM_BUDGET and
ACTMEM_STATS, then checks the statistics file (tests/gpu/actmem_stats.py).

    python3 tests/gpu/preload_training.py [--steps N] [--batch N]
"""

import argparse
import math
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, channels_in, channels_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        self.layers = nn.Sequential(Block(64, 64, 1), Block(64, 128, 2), Block(128, 256, 2))
        self.head = nn.Linear(256, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = SmallResNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    inputs = torch.randn(args.batch, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.batch,), device=device)

    start = time.perf_counter()
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        print("step %d: loss %.4f" % (step, loss.item()))
        if not math.isfinite(loss.item()):
            print("the loss is not finite", file=sys.stderr)
            return 1
    torch.cuda.synchronize()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    print("done: %d steps of batch %d in %.2f s; parameters %d B; torch %s"
          % (args.steps, args.batch, time.perf_counter() - start, parameters, torch.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
