"""On the GPU machine: PyTorch training loops under PyTorch's default CUDA allocator, under
expandable_segments:True, and under actmem's allocator (CUDAPluggableAllocator over
libactmem_alloc.so, in each layout of LAYOUTS), side by side: peak reserved ÷ peak allocated, and
the median step time against the default's. Issue 17's check.

    python3 tests/gpu/allocator_side_by_side.py build/gpu/allocator/libactmem_alloc.so \\
        --out OUT.json [--steps 30] [--actmem-layouts classic,vmm,vmm-keep-holes]

Each (workload, allocator) runs in a process of its own (an allocator cannot be swapped once CUDA
memory was taken). Workloads, written here so that nothing needs fetching:
    resnet    a ResNet-50-shaped network (bottleneck blocks 3-4-6-3), 224x224, batch 64, SGD
    lm        a Transformer encoder LM (width 1024, 8 layers, AdamW), sequence length varying
              per step between 96 and 2048
    churn     200k tensors of 512 B to 12 MiB, 64 live
PyTorch's rows read torch.cuda.max_memory_{reserved,allocated}; actmem's, its ACTMEM_STATS.
A layout actmem refuses (vmm, where the device or driver lacks virtual memory management) is
reported as such, not as a failure of the run. Exit status 0 when every run that should work did."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = ["resnet", "lm", "churn"]

# actmem's rows: a name, and the ACTMEM_ALLOC_CONF it runs under. vmm-keep-holes is vmm without
# Note [Reclaiming holes]: what reclaiming costs in step time (the holes' stream is synchronised
# before they are unmapped) and saves in reserved bytes.
LAYOUTS = {
    "classic": "backend:classic",
    "vmm": "backend:vmm",
    "vmm-keep-holes": "backend:vmm,reclaim_holes:false",
}


def resnet50(torch, nn):
    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, count, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(count):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def child(workload, steps, library):
    """Runs one workload in this process, under actmem's allocator at `library` when given;
    prints one JSON line."""
    import torch
    from torch import nn

    if library:
        allocator = torch.cuda.memory.CUDAPluggableAllocator(library, "actmem_torch_malloc",
                                                             "actmem_free")
        torch.cuda.memory.change_current_allocator(allocator)
    device = torch.device("cuda")
    torch.manual_seed(0)
    times = []

    def timed(fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)

    if workload == "resnet":
        model = resnet50(torch, nn).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(64, 3, 224, 224, device=device)
        y = torch.randint(0, 1000, (64,), device=device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    elif workload == "lm":
        layer = nn.TransformerEncoderLayer(1024, 16, 4096, dropout=0.1, batch_first=True)
        model = nn.ModuleDict({"embed": nn.Embedding(32000, 1024),
                               "encoder": nn.TransformerEncoder(layer, 8,
                                                                enable_nested_tensor=False),
                               "head": nn.Linear(1024, 32000)}).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        lengths = torch.randint(96, 2049, (steps,), generator=torch.Generator().manual_seed(1))
        tokens_per_step = 16384
        index = [0]

        def step():
            length = int(lengths[index[0] % steps])
            index[0] += 1
            batch = max(1, tokens_per_step // length)
            tokens = torch.randint(0, 32000, (batch, length + 1), device=device)
            optimizer.zero_grad(set_to_none=True)
            h = model["encoder"](model["embed"](tokens[:, :-1]), is_causal=True,
                                 mask=nn.Transformer.generate_square_subsequent_mask(
                                     length, device=device))
            logits = model["head"](h)
            nn.functional.cross_entropy(logits.reshape(-1, 32000),
                                        tokens[:, 1:].reshape(-1)).backward()
            optimizer.step()
    else:
        generator = torch.Generator().manual_seed(2)
        live = []
        per_step = 200000 // steps

        def step():
            for _ in range(per_step):
                if len(live) < 64 and (not live or torch.rand(1, generator=generator) < 0.5):
                    exponent = 9 + float(torch.rand(1, generator=generator)) * 14.6  # 512 B..12 MiB
                    live.append(torch.empty(int(2 ** exponent), dtype=torch.uint8, device=device))
                else:
                    live.pop(int(torch.randint(0, len(live), (1,), generator=generator)))
    for _ in range(steps):
        timed(step)
    record = {"step_seconds": statistics.median(times[1:] or times)}
    if not library:
        record["reserved_peak"] = torch.cuda.max_memory_reserved()
        record["allocated_peak"] = torch.cuda.max_memory_allocated()
    print(json.dumps(record), flush=True)


def run(workload, steps, env, stats_path=None, library=None):
    command = [sys.executable, __file__, "--child", workload, "--steps", str(steps)]
    if library:
        command += ["--child-library", library]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["exit %d" % result.returncode])[-1]}
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if stats_path:
        device = json.load(open(stats_path))["devices"]["0"]
        record["reserved_peak"] = device["reserved_bytes"]["peak"]
        record["allocated_peak"] = device["allocated_bytes"]["peak"]
        record["backend_allocs"] = device["backend_allocs"]
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", nargs="?")
    parser.add_argument("--out")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--actmem-layouts", default=",".join(LAYOUTS),
                        help="from " + ", ".join(LAYOUTS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--child")
    parser.add_argument("--child-library")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.child_library)
        return 0
    if not args.library or not args.out:
        parser.error("LIBRARY and --out are needed")
    unknown = set(args.actmem_layouts.split(",")) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layout {', '.join(sorted(unknown))}; from {', '.join(LAYOUTS)}")
    library = os.path.abspath(args.library)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ACTMEM_") and k != "PYTORCH_CUDA_ALLOC_CONF"}
    report, failed = {}, False
    with tempfile.TemporaryDirectory() as folder:
        for workload in args.workloads.split(","):
            rows = {}
            rows["pytorch default"] = run(workload, args.steps, dict(base))
            rows["pytorch expandable_segments"] = run(
                workload, args.steps, dict(base, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True"))
            for layout in args.actmem_layouts.split(","):
                stats = os.path.join(folder, f"{workload}.{layout}.json")
                env = dict(base, ACTMEM_BACKEND="cuda", ACTMEM_STATS=stats,
                           ACTMEM_ALLOC_CONF=LAYOUTS[layout])
                rows[f"actmem {layout}"] = run(workload, args.steps, env, stats, library)
            report[workload] = rows
            default = rows["pytorch default"].get("step_seconds")
            print(f"\n{workload} ({args.steps} steps)")
            print("| allocator | reserved ÷ allocated peak | step vs default |")
            print("|---|--:|--:|")
            for name, row in rows.items():
                if "error" in row:
                    # vmm where the device lacks virtual memory management: refused, named.
                    refused = "ACTMEM_ALLOC_CONF backend:vmm" in row["error"]
                    failed |= not refused
                    print(f"| {name} | {'not available' if refused else 'FAILED'}: "
                          f"{row['error'][:120]} | |")
                    continue
                ratio = row["reserved_peak"] / max(row["allocated_peak"], 1)
                step = row["step_seconds"] / default if default else float("nan")
                print(f"| {name} | {ratio:.3f} | {step:.3f} |")
    with open(args.out, "w") as out:
        json.dump(report, out, indent=2)
    print(f"\nallocator side by side: {'FAILED' if failed else 'passed'}; records in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
