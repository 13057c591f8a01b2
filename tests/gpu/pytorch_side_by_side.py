"""PyTorch's own activation-memory mechanisms, measured for comparison with actmem's policies.

    python3 tests/gpu/pytorch_side_by_side.py --out torch_side_by_side.json [--depths 164,1001]

Builds the pre-activation bottleneck ResNet for 32x32 images (depth 9n+2, widths 16-32-64 with
4x bottleneck expansion, 10 classes: the same network as actmem's `resnet` model, whose `full`
size is depth 1001 at batch 64) and trains it with SGD + momentum under three policies:

  torch.plain        nothing: autograd keeps every activation
  torch.checkpoint   torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) around
                     each residual block (the segments actmem's model uses)
  torch.save_on_cpu  the forward pass under torch.autograd.graph.save_on_cpu(pin_memory=True)

Per policy: a fresh model from the same seed and a fixed synthetic batch; `--warmup` steps, then
`--steps` timed steps. A step is zero_grad, forward, loss, backward, optimizer step, bracketed by
torch.cuda.synchronize(). peak_bytes is torch.cuda.max_memory_allocated() after
reset_peak_memory_stats(), minus torch.cuda.memory_allocated() at the step's start (parameters and
momentum; gradients are freed by zero_grad), the largest over the timed steps; step_seconds is the
median of the timed steps. PyTorch's default settings otherwise (fp32, cudnn.benchmark off).

Writes {"meta": {...}, "records": [{model, depth, size, policy, batch, peak_bytes, step_seconds,
...}, ...]} to --out and prints a table. Exits 1 when a policy failed (its record says why).
"""

import argparse
import gc
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

POLICIES = {
    "plain": "torch.plain",
    "checkpoint": "torch.checkpoint",
    "save_on_cpu": "torch.save_on_cpu",
}


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, channels_in, planes, stride):
        super().__init__()
        channels_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(channels_in)
        self.conv1 = nn.Conv2d(channels_in, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, channels_out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """He et al., "Identity Mappings in Deep Residual Networks" (2016), the CIFAR bottleneck net."""

    def __init__(self, depth, width=16, classes=10):
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError("depth must be 9n+2 (164, 1001, ...), not %d" % depth)
        blocks_per_stage = (depth - 2) // 9
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        blocks = []
        channels = width
        for stage, planes in enumerate((width, width * 2, width * 4)):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(PreActBottleneck(channels, planes, stride))
                channels = planes * PreActBottleneck.expansion
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x, checkpoint_blocks=False):
        x = self.stem(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if checkpoint_blocks else block(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train_step(model, optimizer, inputs, targets, policy):
    """Forward, loss, backward and the optimizer's step; the caller has zeroed the gradients."""
    if policy == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu(pin_memory=True):
            loss = F.cross_entropy(model(inputs), targets)
    else:
        loss = F.cross_entropy(model(inputs, checkpoint_blocks=(policy == "checkpoint")),
                               targets)
    loss.backward()
    optimizer.step()
    return loss


def measure(depth, policy, batch, warmup, steps, device):
    torch.manual_seed(0)
    model = PreActResNet(depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator(device="cpu").manual_seed(1)
    inputs = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    targets = torch.randint(0, 10, (batch,), generator=generator).to(device)

    seconds, peaks, totals, starts, losses = [], [], [], [], []
    for step in range(warmup + steps):
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        began = time.perf_counter()
        loss = train_step(model, optimizer, inputs, targets, policy)
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - began
        losses.append(loss.item())
        if step >= warmup:
            seconds.append(elapsed)
            total = torch.cuda.max_memory_allocated(device)
            totals.append(total)
            starts.append(start_bytes)
            peaks.append(total - start_bytes)
    parameters = sum(p.numel() for p in model.parameters())
    median = statistics.median(seconds)
    return {
        "peak_bytes": max(peaks),
        "step_seconds": median,
        "samples_per_second": batch / median,
        "step_seconds_each": seconds,
        "start_bytes": max(starts),
        "peak_total_bytes": max(totals),
        "parameters": parameters,
        "losses": losses,
    }


def write(path, meta, records):
    """Rewrites the whole file: what finished is kept if a later run is cut short."""
    with open(path, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--depths", default="164",
                        help="comma-separated ResNet depths, each 9n+2 (default 164; actmem's "
                             "resnet at `full` size is 1001)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated, from: " + ", ".join(POLICIES))
    args = parser.parse_args()

    try:
        depths = [int(d) for d in args.depths.split(",") if d]
    except ValueError:
        parser.error("--depths takes comma-separated integers, not %r" % args.depths)
    policies = [p for p in args.policies.split(",") if p]
    for policy in policies:
        if policy not in POLICIES:
            parser.error("unknown policy %r; valid: %s" % (policy, ", ".join(POLICIES)))
    for depth in depths:
        if depth < 11 or (depth - 2) % 9 != 0:
            parser.error("depth %d is not 9n+2 with n >= 1" % depth)
    if not torch.cuda.is_available():
        print("pytorch_side_by_side: no CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda", 0)

    meta = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(device),
        "python": platform.python_version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "peak_bytes": "max_memory_allocated minus memory_allocated at the step's start",
        "step_seconds": "median of the timed steps, synchronized",
    }
    records = []
    failed = False
    for depth in depths:
        for policy in policies:
            record = {
                "model": "resnet",
                "depth": depth,
                "config": "preact bottleneck ResNet-%d, 32x32, width 16, 10 classes" % depth,
                "size": "full" if depth == 1001 else None,
                "policy": POLICIES[policy],
                "batch": args.batch,
            }
            try:
                record.update(measure(depth, policy, args.batch, args.warmup, args.steps, device))
            except Exception as error:  # an OOM or anything else: record it, go on
                record["error"] = "%s: %s" % (type(error).__name__, error)
                failed = True
            records.append(record)
            write(args.out, meta, records)
            gc.collect()
            torch.cuda.empty_cache()
            if "error" in record:
                print("resnet-%-5d %-18s FAILED: %s" % (depth, record["policy"], record["error"]))
            else:
                print("resnet-%-5d %-18s batch %3d  peak %9.1f MiB  step %8.2f ms  %8.1f samples/s"
                      % (depth, record["policy"], args.batch, record["peak_bytes"] / 2**20,
                         record["step_seconds"] * 1e3, record["samples_per_second"]))
            sys.stdout.flush()

    write(args.out, meta, records)
    print("wrote %s" % args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
