"""actmem in code: enable(), segment(), stats(), disable(), in fresh interpreters."""

import subprocess
import sys
import textwrap

from conftest import environment

MODEL = """
import torch, actmem
from torch import nn
torch.manual_seed(0)
blocks = [nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Dropout(0.1)) for _ in range(4)]
model = nn.Sequential(*blocks)  # a flat Sequential of Sequentials: the default rule picks them
def step():
    model.zero_grad()
    loss = model(torch.randn(512, 64)).square().mean()  # 128 KiB activations: offloadable
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]
"""


def python(code, **variables):
    result = subprocess.run([sys.executable, "-c", MODEL + textwrap.dedent(code)],
                            env=environment(**variables), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_enable_recomputes_and_disable_stops():
    out = python("""
        torch.manual_seed(1); plain = step()
        actmem.enable(policy="recompute")
        torch.manual_seed(1); managed = step()
        print(actmem.segments())
        print(all(torch.equal(a, b) for a, b in zip([plain[0]] + plain[1], [managed[0]] + managed[1])))
        activations = actmem.stats()["activations"]
        print(activations["recomputations"], activations["steps"])
        actmem.disable()
        torch.manual_seed(1); again = step()
        print(actmem.stats()["activations"]["recomputations"], actmem.enabled())
    """)
    assert out.splitlines() == ["['0', '1', '2', '3']", "True", "4 1", "4 False"]


def test_arguments_override_the_environment():
    out = python("""
        actmem.enable(policy="offload")
        step()
        a = actmem.stats()["activations"]
        print(a["tensors_offloaded"] > 0, a["recomputations"])
    """, ACTMEM_POLICY="recompute")
    assert out.splitlines() == ["True 0"]


def test_an_explicit_segment_with_a_rule_that_picks_nothing():
    out = python("""
        actmem.enable(policy="recompute", segments="nothing")
        actmem.segment(model[2], "third")
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        print(actmem.stats()["activations"]["recomputations"], len(caught))
    """)
    assert out.splitlines() == ["1 1"]


def test_enable_twice_and_bad_arguments_raise():
    out = python("""
        try:
            actmem.enable(policy="sometimes")
        except ValueError as e:
            print("ValueError", "ACTMEM_POLICY" in str(e))
        try:
            actmem.enable(budget="lots")
        except ValueError as e:
            print("ValueError", "ACTMEM_BUDGET" in str(e))
        print(actmem.enabled())
        actmem.enable()
        try:
            actmem.enable()
        except RuntimeError as e:
            print("RuntimeError")
    """)
    assert out.splitlines() == ["ValueError True", "ValueError True", "False", "RuntimeError"]
