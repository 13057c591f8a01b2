"""Scripts that torch.compile their model under python -m actmem: compiled code runs actmem's
segments as plain modules (Note [Segments under torch.compile]), trains to the bits of
torch.compile without actmem, and its saved tensors are still kept or offloaded by the policy.
Dynamo failed on actmem's module hook before."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import assert_same_bits, environment

# aot_eager runs what inductor's code generation starts from (Dynamo's graph, AOTAutograd's
# forward and backward, whose saved tensors reach actmem's hooks) without compiling C++: fast, and
# no compiler needed. The inductor case is the one a script would run.
CASES = [
    ("model", "aot_eager", ["keep", "recompute", "offload"]),
    ("blocks", "aot_eager", ["recompute"]),
    ("model", "inductor", ["offload"]),
]


@pytest.mark.parametrize("mode, backend, policies", CASES)
def test_compiled_models_train_to_the_bits_of_plain_torch_compile(mode, backend, policies,
                                                                  run_script):
    args = ("--compile", mode, "--backend", backend)
    plain = run_script("cnn_train", *args, actmem=False)
    for policy in policies:
        run = run_script("cnn_train", *args, ACTMEM_POLICY=policy)
        assert_same_bits(plain.digest, run.digest)
        activations = run.stats["activations"]
        assert activations["steps"] == 3, policy
        assert activations["recomputations"] == 0, policy
        assert activations["packed"] > 0, policy  # the compiled graph's saved tensors
        if policy == "offload":
            assert activations["bytes_offloaded"] > 0
        # The warning says recompute does not reach compiled code; where nothing would be
        # recomputed anyway, it says nothing.
        warned = run.stderr.count("actmem: torch.compile compiles")
        assert warned == (1 if policy == "recompute" else 0), run.stderr[-3000:]
        if mode == "blocks" and warned:
            assert "compiles the segments 1.0, 1.1, 1.2, 1.3, 1.4, 1.5:" in run.stderr
        assert "Traceback" not in run.stderr



def test_the_warning_comes_for_a_model_run_eagerly_first_and_for_a_wrapped_compiled_model(
        tmp_path):
    # Found by a review: both ran their segments compiled without a word.
    script = tmp_path / "compiled_twice.py"
    script.write_text(textwrap.dedent("""
        import torch, warnings
        from torch import nn
        warnings.simplefilter("always")
        def blocks():
            return nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)])
        class Wrapper(nn.Module):  # as DistributedDataParallel holds a compiled model
            def __init__(self, module):
                super().__init__()
                self.module = module
            def forward(self, x):
                return self.module(x)
        first = blocks()
        first(torch.randn(4, 8))  # named eagerly, then compiled
        torch.compile(first, backend="aot_eager")(torch.randn(4, 8)).sum().backward()
        wrapped = Wrapper(torch.compile(blocks(), backend="aot_eager"))
        wrapped(torch.randn(4, 8)).sum().backward()
    """))
    result = subprocess.run([sys.executable, "-m", "actmem", str(script)],
                            env=environment(ACTMEM_POLICY="recompute"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    warnings = [line for line in result.stderr.splitlines()
                if "actmem: torch.compile compiles the segments" in line]
    assert len(warnings) == 2, result.stderr[-3000:]
    assert "the segments 0, 1, 2:" in warnings[0]
    assert "the segments module._orig_mod.0, module._orig_mod.1, module._orig_mod.2:" in warnings[1]
    # At the lines of the script that called the models (15 and 17).
    assert warnings[0].startswith(f"{script}:15:") and warnings[1].startswith(f"{script}:17:"), \
        warnings


ATTENTION = """
import sys, torch
import torch.nn.functional as F
class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(64, 192)
    def forward(self, x):
        q, k, v = self.qkv(x).view(32, 16, 3, 4, 16).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)
torch.manual_seed(0)
model = Attention()
compiled = torch.compile(model)
compiled(torch.randn(32, 16, 64)).square().sum().backward()
torch.save([p.grad for p in model.parameters()], sys.argv[1])
"""


def test_offloaded_views_come_back_with_the_strides_inductors_backward_asserts(tmp_path):
    # Found by a downstream run: attention's saved q, k and v are permuted slices of one
    # projection; offload brought them back dense, and inductor's backward failed its
    # assert_size_stride (Note [Offloaded tensors come back laid out as they went]).
    script = tmp_path / "attention.py"
    script.write_text(ATTENTION)
    outputs = {}
    for label, prefix in [("plain", []), ("offload", ["-m", "actmem"])]:
        out = tmp_path / f"{label}.pt"
        stats = tmp_path / f"{label}.json"
        result = subprocess.run([sys.executable, *prefix, str(script), str(out)],
                                env=environment(ACTMEM_POLICY="offload", ACTMEM_STATS=stats),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[label] = torch.load(out)
    assert all(torch.equal(a, b) for a, b in zip(outputs["plain"], outputs["offload"]))
    assert json.loads((tmp_path / "offload.json").read_text())["activations"]["bytes_offloaded"] > 0
