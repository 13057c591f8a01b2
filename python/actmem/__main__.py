"""python -m actmem SCRIPT [ARGS...]: runs an unmodified training script under the policy that the
environment names (see ``actmem.enable``). The script runs as ``__main__`` with ``sys.argv`` set to
SCRIPT and ARGS, as ``python SCRIPT ARGS`` would run it; its exit status and any traceback are its
own. A malformed ACTMEM_* variable stops the run before the script starts (exit status 2)."""

import os
import runpy
import sys

USAGE = """usage: python -m actmem SCRIPT [ARGS...]

Runs SCRIPT with actmem managing its activations, as the environment says:
  ACTMEM_POLICY       keep | recompute | chain | offload | auto   (default keep)
  ACTMEM_BUDGET       device memory budget, such as 6GiB
  ACTMEM_HOST_BUDGET  host memory for offloads (0: none)
  ACTMEM_SEGMENTS     regular expression over module names that become segments
                      (default: the repeated blocks of nn.Sequential / nn.ModuleList)
  ACTMEM_STATS        write allocator and activation statistics there as JSON at exit
  ACTMEM_LOG          off | info | debug
Under torchrun: torchrun --nproc_per_node N -m actmem SCRIPT [ARGS...]"""


def main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--":
        argv = argv[1:]
    script = argv[0]
    if not os.path.isfile(script):
        print(f"actmem: no such script: {script}", file=sys.stderr)
        return 2
    import actmem

    try:
        actmem.enable()
    except (ValueError, RuntimeError) as error:
        print(error if str(error).startswith("actmem:") else f"actmem: {error}", file=sys.stderr)
        return 2
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
