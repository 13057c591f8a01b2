"""PyTorch's own activation-memory mechanisms on actmem's four reference models, for comparison.

    python3 tests/gpu/pytorch_side_by_side.py --out torch_side_by_side.json \
        [--models resnet,densenet,lstm,vnet] [--max-batch-budget 8GiB] [--device cuda]

The same architectures as models/ at their `full` size (models/catalogue.cpp), with the same
segment boundaries:

  resnet    pre-activation bottleneck ResNet-1001, 32x32, batch 64 (--depths adds others, 164...);
            a segment per residual block
  densenet  DenseNet-BC-264 (k=32), 224x224, batch 16; a segment per layer's concatenate ->
            BN -> ReLU -> 1x1 convolution
  lstm      the word language model: vocabulary 33,278, 200-200, 2 layers, dropout 0.2, sequence
            35, batch 256; 4 time chunks and 10 decoder+loss chunks as segments
  vnet      16-32-64-128-256 channels, 5x5x5 convolutions, 128x128x64, batch 2; the input stage and
            each down and up stage a segment

each trained with SGD + momentum 0.9 under three policies:

  torch.plain        nothing: autograd keeps every activation
  torch.checkpoint   torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=False) around
                     each segment
  torch.save_on_cpu  the forward pass under torch.autograd.graph.save_on_cpu(pin_memory=True)

Per model and policy: a fresh model from the same seed and a fixed synthetic batch; the rows of a
model take turns step by step (as actmem's main job does): `--warmup` rounds, then `--steps` timed
ones. A step is zero_grad, forward, loss, backward, optimizer step, bracketed by
torch.cuda.synchronize(). peak_bytes is torch.cuda.max_memory_allocated() after
reset_peak_memory_stats(), minus torch.cuda.memory_allocated() at the step's start (parameters,
momentum and the batch; gradients are freed by zero_grad), the largest over the timed steps;
step_seconds is the median of the timed steps. With --max-batch-budget, the largest batch whose
two steps fit that many bytes allocated in all (parameters included: max_memory_allocated; the
caching allocator's own limit is set with torch.cuda.set_per_process_memory_fraction), doubling
from the model's batch, then bisecting to 1/8. PyTorch's default settings otherwise (fp32,
cudnn.benchmark off).

Writes {"meta": {...}, "records": [{model, size, policy, batch, peak_bytes, step_seconds,
max_batch, ...}, ...]} to --out and prints a table. Exits 1 when a policy failed (its record says
why; an out-of-memory in the max-batch search is not a failure).
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
MODELS = ("resnet", "densenet", "lstm", "vnet")


def segment(policy, fn, *inputs):
    """One of the model's segments: checkpointed under torch.checkpoint, else just run."""
    if policy == "checkpoint":
        return checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)


# --- ResNet: models/resnet.cpp ---------------------------------------------------------------------

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

    def loss(self, batch, policy):
        inputs, targets = batch
        x = self.stem(inputs)
        for block in self.blocks:
            x = segment(policy, block, x)
        x = F.relu(self.bn(x))
        return F.cross_entropy(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), targets)


# --- DenseNet-BC: models/densenet.cpp --------------------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, channels_in, growth, factor):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(channels_in), nn.ReLU(),
                                        nn.Conv2d(channels_in, factor * growth, 1, bias=False))
        self.expand = nn.Sequential(nn.BatchNorm2d(factor * growth), nn.ReLU(),
                                    nn.Conv2d(factor * growth, growth, 3, 1, 1, bias=False))


class DenseNet(nn.Module):
    def __init__(self, block_layers=(6, 12, 64, 48), growth=32, factor=4, compression=0.5,
                 stem_channels=64, classes=1000):
        super().__init__()
        channels = stem_channels
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for b, layers in enumerate(block_layers):
            block = nn.ModuleList()
            for _ in range(layers):
                block.append(DenseLayer(channels, growth, factor))
                channels += growth
            self.blocks.append(block)
            if b + 1 < len(block_layers):
                out = int(channels * compression)
                self.transitions.append(nn.Sequential(
                    nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, out, 1, bias=False),
                    nn.AvgPool2d(2, 2)))
                channels = out
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(channels, classes))

    def loss(self, batch, policy):
        inputs, targets = batch
        x = self.stem(inputs)
        for b, block in enumerate(self.blocks):
            features = [x]
            for layer in block:
                narrow = segment(policy, lambda *f, layer=layer: layer.bottleneck(torch.cat(f, 1)),
                                 *features)
                features.append(layer.expand(narrow))
            x = torch.cat(features, 1)
            if b < len(self.transitions):
                x = self.transitions[b](x)
        return F.cross_entropy(self.head(x), targets)


# --- the LSTM language model: models/lstm_lm.cpp ---------------------------------------------------

class LstmLm(nn.Module):
    def __init__(self, vocabulary=33278, embedding=200, hidden=200, layers=2, dropout=0.2,
                 time_chunks=4, decoder_chunks=10):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.time_chunks, self.decoder_chunks = time_chunks, decoder_chunks
        self.encoder = nn.Embedding(vocabulary, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocabulary)
        self.dropout = nn.Dropout(dropout)

    def _time_chunk(self, words, h, c):
        y, (h, c) = self.rnn(self.dropout(self.encoder(words)), (h, c))
        return self.dropout(y), h, c

    def _decoder_chunk(self, rows, targets):
        return F.cross_entropy(self.decoder(rows), targets, reduction="sum")

    def loss(self, batch, policy):
        words, targets = batch
        h = torch.zeros(self.layers, words.size(1), self.hidden, device=words.device)
        c = torch.zeros_like(h)
        outputs = []
        for chunk in words.chunk(self.time_chunks, 0):
            y, h, c = segment(policy, self._time_chunk, chunk, h, c)
            outputs.append(y)
        rows = torch.cat(outputs, 0).reshape(-1, self.hidden).chunk(self.decoder_chunks, 0)
        flat = targets.reshape(-1)
        total = None
        for part_rows, part_targets in zip(rows, flat.chunk(self.decoder_chunks, 0)):
            part = segment(policy, self._decoder_chunk, part_rows, part_targets)
            total = part if total is None else total + part
        return total / flat.numel()


# --- VNet: models/vnet.cpp -------------------------------------------------------------------------

def conv_stack(channels, n, kernel):
    layers = []
    for _ in range(n):
        layers += [nn.Conv3d(channels, channels, kernel, padding=kernel // 2),
                   nn.BatchNorm3d(channels), nn.PReLU(channels)]
    return nn.Sequential(*layers)


class DownStage(nn.Module):
    def __init__(self, channels_in, convs, kernel):
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(channels_in, 2 * channels_in, 2, 2),
                                  nn.BatchNorm3d(2 * channels_in), nn.PReLU(2 * channels_in))
        self.stack = conv_stack(2 * channels_in, convs, kernel)
        self.out = nn.PReLU(2 * channels_in)

    def forward(self, x):
        y = self.down(x)
        return self.out(self.stack(y) + y)


class UpStage(nn.Module):
    def __init__(self, channels_in, channels_out, convs, kernel):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose3d(channels_in, channels_out // 2, 2, 2),
                                nn.BatchNorm3d(channels_out // 2), nn.PReLU(channels_out // 2))
        self.stack = conv_stack(channels_out, convs, kernel)
        self.out = nn.PReLU(channels_out)

    def forward(self, x, skip):
        y = torch.cat([self.up(x), skip], 1)
        return self.out(self.stack(y) + y)


class VNet(nn.Module):
    DOWN_CONVS, UP_CONVS = (2, 3, 3, 3), (3, 3, 2, 1)

    def __init__(self, channels=16, kernel=5, classes=2):
        super().__init__()
        c = channels
        self.input_conv = nn.Sequential(nn.Conv3d(1, c, kernel, padding=kernel // 2),
                                        nn.BatchNorm3d(c))
        self.input_out = nn.PReLU(c)
        self.down = nn.ModuleList(DownStage(c << s, self.DOWN_CONVS[s], kernel) for s in range(4))
        self.up = nn.ModuleList(
            UpStage(c << 4 if s == 3 else c << (s + 2), c << (s + 1), self.UP_CONVS[3 - s], kernel)
            for s in range(3, -1, -1))
        self.output = nn.Conv3d(2 * c, classes, 1)

    def loss(self, batch, policy):
        volume, labels = batch
        x = segment(policy, lambda v: self.input_out(self.input_conv(v) + v), volume)
        skips = []
        for stage in self.down:
            skips.append(x)
            x = segment(policy, stage, x)
        for i, stage in enumerate(self.up):
            x = segment(policy, stage, x, skips[len(skips) - 1 - i])
        return F.cross_entropy(self.output(x), labels)


# --- the catalogue: models/catalogue.cpp at `full` size ------------------------------------------

def build(model, depth):
    """The model at `full` size, and a function making its synthetic batch of n on a device."""
    def images(size, classes):
        def batch(n, device):
            g = torch.Generator().manual_seed(1)
            return (torch.randn(n, 3, size, size, generator=g).to(device),
                    torch.randint(0, classes, (n,), generator=g).to(device))
        return batch

    if model == "resnet":
        return PreActResNet(depth), images(32, 10)
    if model == "densenet":
        return DenseNet(), images(224, 1000)
    if model == "lstm":
        def words(n, device):
            ids = torch.randint(0, 33278, (36, n), generator=torch.Generator().manual_seed(1))
            return ids[:35].contiguous().to(device), ids[1:].contiguous().to(device)
        return LstmLm(), words
    if model == "vnet":
        def volumes(n, device):
            g = torch.Generator().manual_seed(1)
            return (torch.randn(n, 1, 128, 128, 64, generator=g).to(device),
                    torch.randint(0, 2, (n, 128, 128, 64), generator=g).to(device))
        return VNet(), volumes
    raise ValueError(model)


DEFAULT_BATCH = {"resnet": 64, "densenet": 16, "lstm": 256, "vnet": 2}
CONFIG = {
    "resnet": "preact bottleneck ResNet-%d, 32x32, width 16, 10 classes",
    "densenet": "DenseNet-BC-264, k=32, 224x224, 1000 classes",
    "lstm": "LSTM LM, vocabulary 33278, 200-200, 2 layers, dropout 0.2, sequence 35",
    "vnet": "VNet 16-32-64-128-256, 5x5x5, 128x128x64, 2 classes",
}


class Row:
    """One model under one policy: its own model, optimizer and batch."""

    def __init__(self, model, depth, policy, batch_size, device):
        torch.manual_seed(0)
        self.net, make_batch = build(model, depth)
        self.net.to(device)
        self.policy = policy
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.batch = make_batch(batch_size, device)
        self.device = device
        self.seconds, self.peaks, self.starts, self.totals, self.losses = [], [], [], [], []

    def step(self, measured):
        device = self.device
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        began = time.perf_counter()
        if self.policy == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                loss = self.net.loss(self.batch, self.policy)
        else:
            loss = self.net.loss(self.batch, self.policy)
        loss.backward()
        self.optimizer.step()
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - began
        self.losses.append(loss.item())
        if measured:
            total = torch.cuda.max_memory_allocated(device)
            self.seconds.append(elapsed)
            self.totals.append(total)
            self.starts.append(start_bytes)
            self.peaks.append(total - start_bytes)

    def record(self):
        median = statistics.median(self.seconds)
        return {
            "peak_bytes": max(self.peaks),
            "step_seconds": median,
            "step_seconds_min": min(self.seconds),
            "step_seconds_max": max(self.seconds),
            "samples_per_second": self.batch[0].shape[1 if isinstance(self.net, LstmLm) else 0]
            / median,
            "step_seconds_each": self.seconds,
            "start_bytes": max(self.starts),
            "peak_total_bytes": max(self.totals),
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "losses": self.losses,
        }


def fits(model, depth, policy, batch_size, device):
    """Whether two steps at this batch fit the per-process limit set by the caller."""
    row = None
    try:
        row = Row(model, depth, policy, batch_size, device)
        row.step(False)
        row.step(False)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del row
        gc.collect()
        torch.cuda.empty_cache()


def max_batch(model, depth, policy, start, device, resolution=0.125, limit_factor=32):
    """Doubling from `start`, then bisection to `resolution` of the fit (bench/compare/max_batch)."""
    best, fail, probes = 0, start * limit_factor + 1, 0
    batch = start
    while batch <= start * limit_factor:
        probes += 1
        if not fits(model, depth, policy, batch, device):
            fail = batch
            break
        best = batch
        batch *= 2
    while fail - best > 1 and fail - best > resolution * best:
        middle = best + (fail - best) // 2
        probes += 1
        if fits(model, depth, policy, middle, device):
            best = middle
        else:
            fail = middle
    return best, probes


def parse_bytes(text):
    units = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6,
             "gb": 10**9}
    number = text.rstrip("BbKkMmGgIi")
    unit = text[len(number):].lower()
    if unit not in units:
        raise ValueError("not a byte count: %r" % text)
    return int(float(number) * units[unit])


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
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--depths", default="1001",
                        help="comma-separated ResNet depths, each 9n+2 (default 1001, the full "
                             "size; 164 is the seed's other one)")
    parser.add_argument("--batch", type=int, default=0,
                        help="the batch of every model (default: each model's full-size batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated, from: " + ", ".join(POLICIES))
    parser.add_argument("--max-batch-budget", default="",
                        help="search the largest batch whose steps fit this many bytes in all, "
                             "e.g. 8GiB (default: no search)")
    args = parser.parse_args()

    models = [m for m in args.models.split(",") if m]
    for model in models:
        if model not in MODELS:
            parser.error("unknown model %r; valid: %s" % (model, ", ".join(MODELS)))
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
    try:
        budget = parse_bytes(args.max_batch_budget) if args.max_batch_budget else 0
    except ValueError as error:
        parser.error("--max-batch-budget: %s" % error)
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
        "warmup_rounds": args.warmup,
        "timed_rounds": args.steps,
        "peak_bytes": "max_memory_allocated minus memory_allocated at the step's start",
        "step_seconds": "median of the timed steps, synchronized; a model's rows take turns",
        "max_batch_budget_bytes": budget,
    }
    records = []
    failed = False
    targets = [("resnet", d) for d in depths if "resnet" in models]
    targets += [(m, None) for m in models if m != "resnet"]
    for model, depth in targets:
        batch = args.batch or DEFAULT_BATCH[model]
        name = "resnet-%d" % depth if model == "resnet" else model
        rows, errors = {}, {}
        for policy in policies:
            try:
                rows[policy] = Row(model, depth or 1001, policy, batch, device)
            except Exception as error:  # an OOM or anything else: record it, go on
                errors[policy] = "%s: %s" % (type(error).__name__, error)
        for round_index in range(args.warmup + args.steps):
            order = list(rows)
            order = order[round_index % len(order):] + order[:round_index % len(order)] if order else []
            for policy in order:
                if policy in errors:
                    continue
                try:
                    rows[policy].step(round_index >= args.warmup)
                except Exception as error:
                    errors[policy] = "%s: %s" % (type(error).__name__, error)
        for policy in policies:
            record = {"model": model, "depth": depth, "size": "full",
                      "config": CONFIG[model] % depth if model == "resnet" else CONFIG[model],
                      "policy": POLICIES[policy], "batch": batch}
            if policy in errors:
                record["error"] = errors[policy]
                failed = True
            else:
                record.update(rows[policy].record())
            records.append(record)
        rows.clear()
        gc.collect()
        torch.cuda.empty_cache()
        if budget:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
            for record in records[-len(policies):]:
                policy = next(p for p, label in POLICIES.items() if label == record["policy"])
                try:
                    found, probes = max_batch(model, depth or 1001, policy, batch, device)
                    record["max_batch"], record["max_batch_probes"] = found, probes
                    record["max_batch_budget_bytes"] = budget
                except Exception as error:
                    record["max_batch_error"] = "%s: %s" % (type(error).__name__, error)
                    failed = True
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        write(args.out, meta, records)
        for record in records[-len(policies):]:
            if "error" in record:
                print("%-12s %-18s FAILED: %s" % (name, record["policy"], record["error"]))
            else:
                print("%-12s %-18s batch %4d  peak %9.1f MiB  step %8.2f ms (%.2f-%.2f)  "
                      "max batch %s" % (name, record["policy"], batch, record["peak_bytes"] / 2**20,
                                        record["step_seconds"] * 1e3,
                                        record["step_seconds_min"] * 1e3,
                                        record["step_seconds_max"] * 1e3,
                                        record.get("max_batch", "-")))
        sys.stdout.flush()

    write(args.out, meta, records)
    print("wrote %s" % args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
