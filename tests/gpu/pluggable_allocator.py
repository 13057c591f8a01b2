"""PyTorch as a client of libactmem_alloc.so, through its pluggable-allocator interface.

    python3 tests/gpu/pluggable_allocator.py build/gpu/allocator/libactmem_alloc.so

Installs actmem as PyTorch's CUDA allocator with
torch.cuda.memory.CUDAPluggableAllocator(path, "actmem_torch_malloc", "actmem_free") and
change_current_allocator (before any CUDA memory is taken: PyTorch refuses to swap an allocator
that has allocated), trains a small convolutional network for a few steps, then reads actmem's
statistics through its C ABI (actmem_stats_json, allocator/actmem_alloc.h) and checks that they
saw the bytes: a CUDA backend, allocations counted, and an allocated peak above the bytes of the
model's parameters (parameters, gradients, momentum and activations all come from actmem).

Prints one line; exits 0 when the check holds, 1 when it does not, 2 on a usage error. Under this
allocator PyTorch's own memory statistics (torch.cuda.memory_allocated and friends) are not
available, so none is used here.
"""

import ctypes
import json
import math
import os
import sys

import actmem_stats  # beside this file

STEPS = 5
BATCH = 64


def fail(message):
    print("pluggable allocator: FAIL: " + message)
    return 1


def main():
    if len(sys.argv) != 2:
        print("usage: pluggable_allocator.py PATH/TO/libactmem_alloc.so", file=sys.stderr)
        return 2
    path = os.path.abspath(sys.argv[1])
    if not os.path.isfile(path):
        return fail("no library at " + path)

    import torch
    from torch import nn

    if not torch.cuda.is_available():
        return fail("torch %s sees no CUDA device" % torch.__version__)

    allocator = torch.cuda.memory.CUDAPluggableAllocator(path, "actmem_torch_malloc", "actmem_free")
    torch.cuda.memory.change_current_allocator(allocator)

    # The same file: dlopen hands back the handle PyTorch opened, so these are the same
    # allocators PyTorch now uses.
    lib = ctypes.CDLL(path)
    lib.actmem_stats_json.argtypes = []
    lib.actmem_stats_json.restype = ctypes.c_char_p
    lib.actmem_last_error.argtypes = []
    lib.actmem_last_error.restype = ctypes.c_char_p

    torch.manual_seed(0)
    device = torch.device("cuda", 0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs = torch.randn(BATCH, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (BATCH,), device=device)

    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    torch.cuda.synchronize()

    if not all(math.isfinite(value) for value in losses):
        return fail("the loss is not finite: %s" % losses)
    last_error = lib.actmem_last_error()
    stats = json.loads(lib.actmem_stats_json().decode())
    ok, message = actmem_stats.check(stats, min_peak_bytes=param_bytes + 1)
    line = ("pluggable allocator: %s: torch %s, %d steps (loss %.4f -> %.4f), parameters %d B; %s"
            % ("ok" if ok else "FAIL", torch.__version__, STEPS, losses[0], losses[-1],
               param_bytes, message))
    if last_error:
        line += "; last actmem error: " + last_error.decode(errors="replace")
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
