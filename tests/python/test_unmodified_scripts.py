"""Unmodified training scripts under python -m actmem: under every policy they train to the bit as
they do without actmem, and every policy but keep holds less at its peak than keep."""

import pytest

from conftest import assert_same_bits

SCRIPTS = ["cnn_train", "transformer_lm"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_policies_train_to_the_bits_of_plain_pytorch(script, run_script):
    plain = run_script(script, actmem=False)
    keep = run_script(script, ACTMEM_POLICY="keep")
    assert_same_bits(plain.digest, keep.digest)
    assert keep.stats["activations"]["steps"] == 3
    assert keep.stats["activations"]["tensors_recomputed"] == 0

    for policy in ["recompute", "chain", "offload"]:
        run = run_script(script, ACTMEM_POLICY=policy)
        assert_same_bits(plain.digest, run.digest)
        assert run.peak() < keep.peak(), policy
        activations = run.stats["activations"]
        assert activations["steps"] == 3, policy
        if policy == "offload":
            assert activations["bytes_offloaded"] > 0
        else:
            assert activations["recomputations"] > 0, policy

    # auto at half of what keep reserved at its peak: it must fit, and train to the same bits.
    budget = keep.peak("reserved_bytes") // 2
    auto = run_script(script, ACTMEM_POLICY="auto", ACTMEM_BUDGET=budget)
    assert_same_bits(plain.digest, auto.digest)
    assert auto.peak("reserved_bytes") <= budget
    assert auto.peak() < keep.peak()


def test_segments_by_regular_expression(run_script):
    plain = run_script("cnn_train", actmem=False)
    # Only the last three blocks: fewer recomputations than the default's six blocks.
    run = run_script("cnn_train", ACTMEM_POLICY="recompute", ACTMEM_SEGMENTS=r"1\.[345]")
    assert_same_bits(plain.digest, run.digest)
    assert run.stats["activations"]["recomputations"] == 3 * 3


def test_a_forward_the_script_wrapped_itself_still_runs(run_script):
    # The script wraps each block's forward in torch.utils.checkpoint; the segments actmem makes of
    # those blocks must run that wrapper, not the class's forward (they did at first: checkpoint's
    # saving was lost).
    plain = run_script("cnn_train", "--torch-mode", "checkpoint", actmem=False)
    keep = run_script("cnn_train", ACTMEM_POLICY="keep")
    wrapped = run_script("cnn_train", "--torch-mode", "checkpoint", ACTMEM_POLICY="keep")
    assert_same_bits(plain.digest, wrapped.digest)
    assert wrapped.peak() < keep.peak()
