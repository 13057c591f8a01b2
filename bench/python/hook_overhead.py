"""What actmem's hooks cost per saved tensor under keep, in Python, against plain PyTorch.

    python bench/python/hook_overhead.py [--ops 400] [--rounds 60] [--json out.json]

One step is a forward of OPS element-wise ops on a tiny tensor, each saving one tensor for
backward, and its backward: the time per step is almost all per-op overhead, so differences per
saved tensor are what the hooks add. Rows, interleaved round by round in rotating order so that
order and warm-up favour none, all in one process on actmem's allocator:

    plain           no saved-tensor hooks
    python-hooks    PyTorch's mechanism with identity hooks written in Python (what any hook pays)
    actmem-keep     actmem's pack and unpack hooks, under a keep scope

Reports each row's median step and its cost per saved tensor over plain (ns)."""

import argparse
import json
import statistics
import sys
import time

import torch

from actmem import _C


def step(x, ops):
    y = x
    for _ in range(ops):
        y = y.sin()  # saves its input
    y.sum().backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json", help="write the figures there")
    args = parser.parse_args()

    torch.set_num_threads(1)
    _C.enable({"ACTMEM_POLICY": "keep"})  # a scope on this thread, and actmem's allocator
    pack, unpack = _C.make_hooks()
    x = torch.randn(8, requires_grad=True)
    rows = {
        "plain": lambda: None,
        "python-hooks": lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
        "actmem-keep": lambda: torch.autograd.graph.saved_tensors_hooks(pack, unpack),
    }
    names = list(rows)
    times = {name: [] for name in names}
    for round_ in range(args.rounds + 5):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            context = rows[name]()
            start = time.perf_counter()
            if context is None:
                step(x, args.ops)
            else:
                with context:
                    step(x, args.ops)
            elapsed = time.perf_counter() - start
            if round_ >= 5:  # warm-up rounds are dropped
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    activations = json.loads(_C.stats_json())["activations"]
    result = {
        "ops": args.ops,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "median_step_us": {name: medians[name] * 1e6 for name in names},
        "ns_per_saved_tensor_over_plain": {
            name: (medians[name] - medians["plain"]) / args.ops * 1e9 for name in names
        },
        "actmem_packed": activations["packed"],
    }
    print(f"{'row':<14}{'step (us)':>12}{'ns per saved tensor over plain':>34}")
    for name in names:
        print(f"{name:<14}{result['median_step_us'][name]:>12.1f}"
              f"{result['ns_per_saved_tensor_over_plain'][name]:>34.0f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
