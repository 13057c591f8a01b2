"""DistributedDataParallel (gloo, 2 processes under torchrun) trains under every policy to the bits
it trains to without actmem: actmem stays out of PyTorch's distributed engine."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import SCRIPTS, assert_same_bits, environment


def torchrun(out, actmem, **variables):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2"]
    if actmem:
        command += ["-m", "actmem"]
    command += [str(SCRIPTS / "ddp_train.py"), "--out", str(out)]
    env = environment(OMP_NUM_THREADS=1, **variables)
    env["PYTHONPATH"] = f"{SCRIPTS}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(f"{out}.rank{rank}") for rank in range(2)]


@pytest.mark.parametrize("policy", ["keep", "recompute", "offload", "auto"])
def test_ddp_trains_to_the_bits_it_does_without_actmem(policy, tmp_path):
    plain = torchrun(tmp_path / "plain", actmem=False)
    assert not plain[0]["losses"].equal(plain[1]["losses"])  # the ranks saw different data
    assert_same_bits(plain[0]["grads"], plain[1]["grads"])  # and all-reduced their gradients
    # Both ranks write the statistics to the one path: the file holds one rank's.
    stats = tmp_path / "stats.json"
    variables = {"ACTMEM_POLICY": policy, "ACTMEM_STATS": stats}
    if policy == "auto":
        variables["ACTMEM_BUDGET"] = "3MiB"  # keep's peak reserves 4 MiB
    runs = torchrun(tmp_path / policy, actmem=True, **variables)
    for rank in range(2):
        assert_same_bits(plain[rank], runs[rank])
    activations = json.loads(stats.read_text())["activations"]
    assert activations["steps"] == 3
    sent_out = {
        "keep": 0,
        "recompute": activations["bytes_recomputed"],
        "offload": activations["bytes_offloaded"],
        "auto": activations["bytes_offloaded"] + activations["bytes_dropped"],
    }[policy]
    assert (sent_out > 0) == (policy != "keep")
