"""Checks actmem's statistics JSON (what actmem_stats_json() returns and ACTMEM_STATS writes).

The layout (allocator/process_allocators.cpp, allocator/stats.cpp):

    {"devices": {"0": {"backend": "cuda",
                       "allocated_bytes": {"current": .., "peak": .., "total": ..},
                       "reserved_bytes": {...}, ..., "allocations": N, "cache_hits": N,
                       "budget_bytes": N, ...}}}

As a command, for the LD_PRELOAD test:

    python3 actmem_stats.py STATS.json --min-peak-bytes N [--budget-bytes N] [--label NAME]
                            [--backend NAME]

prints one line and exits 0 when the stats show the bytes, 1 when they do not.
"""

import argparse
import json
import sys


def check(stats, min_peak_bytes, budget_bytes=None, backend="cuda"):
    """Returns (ok, message): whether a CUDA device's allocator saw at least min_peak_bytes.

    backend: what the stats must name: "cuda" for the classic layout, "vmm" for growable segments
    (ACTMEM_ALLOC_CONF=backend:vmm).
    """
    devices = stats.get("devices", {})
    if not devices:
        return False, ("no device allocator in the stats: actmem served no allocation "
                       "(everything passed through, or nothing was allocated)")
    problems = []
    summary = []
    for index, device in sorted(devices.items()):
        peak = device["allocated_bytes"]["peak"]
        reserved_peak = device["reserved_bytes"]["peak"]
        summary.append("device %s: backend %s, allocated peak %d B, reserved peak %d B, "
                       "%d allocations, %d cache hits, budget %d B"
                       % (index, device["backend"], peak, reserved_peak, device["allocations"],
                          device["cache_hits"], device["budget_bytes"]))
        if device["backend"] != backend:
            problems.append("device %s has backend %r, not %r" % (index, device["backend"], backend))
        if peak < min_peak_bytes:
            problems.append("device %s: allocated peak %d B is below the expected %d B"
                            % (index, peak, min_peak_bytes))
        if device["allocations"] <= 0:
            problems.append("device %s: no allocations counted" % index)
        if device.get("backend_errors", 0) != 0:
            problems.append("device %s: %d backend errors (reported on stderr)"
                            % (index, device["backend_errors"]))
        if budget_bytes is not None:
            if device["budget_bytes"] != budget_bytes:
                problems.append("device %s: budget %d B, expected %d B"
                                % (index, device["budget_bytes"], budget_bytes))
            if reserved_peak > budget_bytes:
                problems.append("device %s: reserved peak %d B is above the budget %d B"
                                % (index, reserved_peak, budget_bytes))
    message = "; ".join(summary)
    if problems:
        return False, message + " -- " + "; ".join(problems)
    return True, message


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats", help="the stats JSON file")
    parser.add_argument("--min-peak-bytes", type=int, required=True)
    parser.add_argument("--budget-bytes", type=int, default=None)
    parser.add_argument("--label", default="actmem stats")
    parser.add_argument("--backend", default="cuda",
                        help="the backend the stats must name (cuda, or vmm for growable segments)")
    args = parser.parse_args()
    try:
        with open(args.stats) as f:
            stats = json.load(f)
    except (OSError, ValueError) as error:
        print("%s: FAIL: cannot read %s: %s" % (args.label, args.stats, error))
        return 1
    ok, message = check(stats, args.min_peak_bytes, args.budget_bytes, args.backend)
    print("%s: %s: %s" % (args.label, "ok" if ok else "FAIL", message))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
