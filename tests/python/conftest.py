"""Helpers for the Python package's tests: each test runs scripts in fresh interpreters (actmem
installs its allocator into the process it is enabled in), with and without ``python -m actmem``,
and compares what they wrote."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPTS = pathlib.Path(__file__).resolve().parent / "scripts"


class Run:
    def __init__(self, process, digest, stats):
        self.returncode = process.returncode
        self.stdout = process.stdout
        self.stderr = process.stderr
        self.digest = digest
        self.stats = stats

    def peak(self, what="allocated_bytes"):
        return self.stats["devices"]["0"][what]["peak"]


def environment(**variables):
    """This process's environment without any ACTMEM_* variable, plus ``variables``; the CPU plays
    the device (on a GPU machine too: these tests are about CPU tensors)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTMEM_")}
    env["ACTMEM_BACKEND"] = "host"
    env.update({k: str(v) for k, v in variables.items()})
    return env


@pytest.fixture
def run_script(tmp_path):
    """run_script(script, *args, actmem=True, **ACTMEM_variables) -> Run: runs a script of
    scripts/ (under python -m actmem unless actmem=False) with --out in tmp_path, and loads what
    it wrote and the ACTMEM_STATS JSON."""
    count = [0]

    def run(script, *args, actmem=True, check=True, **variables):
        count[0] += 1
        out = tmp_path / f"{script}.{count[0]}.pt"
        stats = tmp_path / f"{script}.{count[0]}.json"
        command = [sys.executable]
        if actmem:
            command += ["-m", "actmem"]
            variables.setdefault("ACTMEM_STATS", stats)
        command += [str(SCRIPTS / f"{script}.py"), "--out", str(out), *args]
        process = subprocess.run(command, env=environment(**variables), capture_output=True,
                                 text=True, timeout=600)
        if check and process.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({process.returncode}):\n"
                                 f"{process.stderr[-4000:]}")
        digest = torch.load(out) if out.exists() else None
        loaded = json.loads(stats.read_text()) if stats.exists() else None
        return Run(process, digest, loaded)

    return run


def assert_same_bits(expected, actual):
    """Every tensor of two digests equal to the bit (NaNs in the same places); their "meta"
    (times, peaks) aside."""
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if key == "meta":
            continue
        if isinstance(value, dict):
            assert value.keys() == actual[key].keys(), key
            for name, tensor in value.items():
                other = actual[key][name]
                assert tensor.dtype == other.dtype and tensor.shape == other.shape, (key, name)
                assert torch.equal(tensor.view(-1).view(torch.uint8) if tensor.dtype.is_floating_point
                                   else tensor, other.view(-1).view(torch.uint8)
                                   if other.dtype.is_floating_point else other), (key, name)
        else:
            assert torch.equal(value, actual[key]), key
