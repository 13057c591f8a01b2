"""python -m actmem with bad input: every malformed variable stops the run before the script
starts, naming the variable; a script's own failure comes through as it is."""

import subprocess
import sys

import pytest

from conftest import SCRIPTS, environment


def actmem(*args, **variables):
    return subprocess.run([sys.executable, "-m", "actmem", *map(str, args)],
                          env=environment(**variables), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("variable, value", [
    ("ACTMEM_POLICY", "fastest"),
    ("ACTMEM_BUDGET", "12 parsecs"),
    ("ACTMEM_HOST_BUDGET", "-1GiB"),
    ("ACTMEM_LOG", "loud"),
    ("ACTMEM_SEGMENTS", "layer(\\d"),
    ("ACTMEM_ALLOC_CONF", "no_such_key:1"),
])
def test_a_malformed_variable_stops_the_run_naming_it(variable, value):
    result = actmem(SCRIPTS / "raises.py", **{variable: value})
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "stepped" not in result.stdout  # the script never started
    assert "Traceback" not in result.stderr


def test_a_script_that_raises_keeps_its_traceback_and_status():
    result = actmem(SCRIPTS / "raises.py", ACTMEM_POLICY="recompute")
    assert result.returncode == 1
    assert "stepped" in result.stdout
    assert "KeyError: \"the script's own error\"" in result.stderr
    assert "raises.py" in result.stderr


def test_a_script_that_exits_keeps_its_status():
    result = actmem(SCRIPTS / "raises.py", 7, ACTMEM_POLICY="offload")
    assert result.returncode == 7
    assert "stepped" in result.stdout


def test_segments_that_match_nothing_warn_naming_the_modules(run_script):
    plain = run_script("cnn_train", actmem=False)
    run = run_script("cnn_train", ACTMEM_POLICY="recompute", ACTMEM_SEGMENTS=r"blocks\.\d+")
    assert "ACTMEM_SEGMENTS='blocks\\\\.\\\\d+' picks no module of Sequential" in run.stderr
    assert "1.0, 1.0.bn1" in run.stderr  # the names it has
    assert run.stats["activations"]["recomputations"] == 0
    assert run.digest["losses"].equal(plain.digest["losses"])


def test_no_script_and_a_missing_script_are_usage_errors():
    assert actmem().returncode == 2
    missing = actmem("no_such_script.py")
    assert missing.returncode == 2 and "no such script" in missing.stderr
