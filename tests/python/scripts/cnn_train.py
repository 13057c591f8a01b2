"""A small CNN trained with SGD: residual blocks with BatchNorm and dropout in an nn.Sequential.
Written as an ordinary training script (it knows nothing of actmem). Writes the losses, the last
step's gradients, the parameters and the buffers to --out (common.py)."""

import torch
from torch import nn

import common


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.2)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(self.drop(torch.relu(self.bn2(y))))
        return x + y


def main():
    args = common.options(__doc__.splitlines()[0], batch=16)
    torch.manual_seed(0)
    blocks = nn.Sequential(*[Block(32) for _ in range(6)])
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        blocks,
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).to(args.device)
    common.checkpointed(blocks, args.torch_mode)
    call = common.compiled(model, blocks, args.compile, args.backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    clock = common.StepClock(args.device)
    losses = []
    with common.steps_context(args.torch_mode, args.device):
        for _ in range(args.steps):
            x = torch.randn(args.batch, 3, 32, 32).to(args.device)
            y = torch.randint(0, 10, (args.batch,)).to(args.device)
            with clock:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(call(x), y)
                loss.backward()
                optimizer.step()
            losses.append(loss.detach())
    common.save(args.out, losses, model, clock)


if __name__ == "__main__":
    main()
