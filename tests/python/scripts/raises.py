"""Trains one step, then fails: with an exception, or with sys.exit(CODE) when given one."""

import sys

import torch

model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
model(torch.randn(2, 4)).sum().backward()
print("stepped", flush=True)
if len(sys.argv) > 1 and sys.argv[1] != "--out":
    sys.exit(int(sys.argv[1]))
raise KeyError("the script's own error")
