"""Scripts that torch.compile their model under python -m actmem: compiled code runs actmem's
segments as plain modules (Note [Segments under torch.compile]), trains to the bits of
torch.compile without actmem, and its saved tensors are still kept or offloaded by the policy.
Dynamo failed on actmem's module hook before."""

import pytest

from conftest import assert_same_bits

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
