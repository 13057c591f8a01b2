"""ctest's way into the pytest suite: runs pytest on the files given, or exits 77 (which ctest
counts as skipped) where pytest is not installed, as on a machine that cannot fetch it (the GPU
machine). ./test.sh installs pytest into the project's virtual environment."""

import sys

try:
    import pytest
except ImportError:
    print("pytest is not installed in this interpreter: skipped (./test.sh installs it)")
    sys.exit(77)

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
