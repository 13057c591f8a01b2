"""What the training scripts share: their options, PyTorch's own activation-memory mechanisms (for
the GPU side-by-side, tests/gpu/python_policies.py), and the file they write. Nothing here knows of
actmem."""

import argparse
import contextlib
import time

import torch
from torch.utils.checkpoint import checkpoint


def options(description, batch):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-mode", choices=["none", "checkpoint", "save_on_cpu"],
                        default="none",
                        help="PyTorch's own mechanism: torch.utils.checkpoint on each block, or "
                             "torch.autograd.graph.save_on_cpu around the steps")
    parser.add_argument("--compile", choices=["none", "model", "blocks"], default="none",
                        help="torch.compile(model), or block.compile() on each block")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        # Bit-for-bit comparisons between runs need deterministic kernels.
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return args


def checkpointed(blocks, mode):
    """Wraps each block's forward in torch.utils.checkpoint when mode says so."""
    if mode != "checkpoint":
        return
    for block in blocks:
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def compiled(model, blocks, mode, backend):
    """The model to call: torch.compile(model) for mode "model"; for "blocks", the model itself,
    each of its blocks compiled in place (block.compile(), as per-block compilation does)."""
    if mode == "model":
        return torch.compile(model, backend=backend)
    if mode == "blocks":
        for block in blocks:
            block.compile(backend=backend)
    return model


def steps_context(mode, device):
    if mode == "save_on_cpu":
        return torch.autograd.graph.save_on_cpu(pin_memory=device.startswith("cuda"))
    return contextlib.nullcontext()


class StepClock:
    """Wall time of each step (the device synchronised at its end) and the CUDA peak where
    PyTorch's own allocator keeps one."""

    def __init__(self, device):
        self.device = device
        self.times = []
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)

    def meta(self):
        peak = -1
        if self.device.startswith("cuda"):
            try:
                peak = torch.cuda.max_memory_allocated()
            except RuntimeError:  # an allocator that keeps no statistics (a pluggable one)
                pass
        return {"step_seconds": self.times, "torch_cuda_peak_bytes": peak}


def save(path, losses, model, clock, buffers=True):
    digest = {
        "losses": torch.stack(losses).cpu(),
        "grads": {n: p.grad.cpu() for n, p in model.named_parameters()},
        "params": {n: p.detach().cpu() for n, p in model.named_parameters()},
        "meta": clock.meta(),
    }
    if buffers:
        digest["buffers"] = {n: b.cpu() for n, b in model.named_buffers()}
    torch.save(digest, path)
