"""The Python package's unmodified training scripts (tests/python/scripts) under python -m actmem
with each policy, beside plain PyTorch, torch.utils.checkpoint and torch.autograd.graph.save_on_cpu,
in one table: peak device bytes, median step time against plain, and whether the run trained to
plain PyTorch's bits. On the GPU machine (scripts/gpu-check.sh runs it):

    PYTHONPATH=build/gpu/python python3 tests/gpu/python_policies.py --out OUT.json

and on CPU, for bench/RESULTS.md: --device cpu. PyTorch's two mechanisms run under actmem's
allocator with the keep policy (their own hooks take the tensors they see), so that every row's
peak is counted the same way; plain PyTorch's peak is torch.cuda's on CUDA, none on CPU.

Exit status 1 when an actmem run failed, trained to other bits than plain PyTorch (the
deterministic kernels are asked for: common.options), or held more at its peak than PyTorch's own
mechanism for the same thing (recompute against torch.utils.checkpoint, offload against
save_on_cpu, 2 % slack); 0 otherwise."""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "python" / "scripts"
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import assert_same_bits  # noqa: E402

WORKLOADS = {
    "cuda": {"cnn_train": ["--batch", "256"], "transformer_lm": ["--batch", "128"]},
    "cpu": {"cnn_train": ["--batch", "32"], "transformer_lm": ["--batch", "32"]},
}


def run(script, device, steps, work, label, actmem=None, torch_mode="none"):
    out = work / f"{script}.{label}.pt"
    stats = work / f"{script}.{label}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTMEM_")}
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    env["PYTHONPATH"] = f"{SCRIPTS}:{env.get('PYTHONPATH', '')}"
    command = [sys.executable]
    if actmem is not None:
        command += ["-m", "actmem"]
        env.update({k: str(v) for k, v in actmem.items()})
        env["ACTMEM_STATS"] = str(stats)
    command += [str(SCRIPTS / f"{script}.py"), "--out", str(out), "--device", device,
                "--steps", str(steps), "--torch-mode", torch_mode, *WORKLOADS[device][script]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    row = {"label": label, "returncode": result.returncode}
    if result.returncode != 0:
        row["error"] = result.stderr[-2000:]
        return row, None
    digest = torch.load(out)
    times = digest["meta"]["step_seconds"][1:] or digest["meta"]["step_seconds"]
    row["step_ms"] = statistics.median(times) * 1e3
    if actmem is not None:
        loaded = json.loads(stats.read_text())
        device = loaded["devices"]["0"]
        row["peak_bytes"] = device["allocated_bytes"]["peak"]
        row["reserved_peak_bytes"] = device["reserved_bytes"]["peak"]
        row["activations"] = loaded.get("activations", {})
    else:
        row["peak_bytes"] = digest["meta"]["torch_cuda_peak_bytes"]
    return row, digest


def same_bits(expected, actual):
    try:
        assert_same_bits(expected, actual)
        return True
    except AssertionError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("python policies: no CUDA device")
        return 1
    failed = False
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        for script in WORKLOADS[args.device]:
            rows = []
            plain, plain_digest = run(script, args.device, args.steps, work, "plain")
            rows.append(plain)
            for mode in ["checkpoint", "save_on_cpu"]:
                row, digest = run(script, args.device, args.steps, work, f"torch {mode}",
                                  actmem={"ACTMEM_POLICY": "keep"}, torch_mode=mode)
                if digest is not None and plain_digest is not None:
                    row["same_bits"] = same_bits(plain_digest, digest)
                rows.append(row)
            keep_reserved = None
            for policy in ["keep", "recompute", "chain", "offload", "auto@50%"]:
                variables = {"ACTMEM_POLICY": policy.split("@")[0]}
                if policy == "auto@50%":
                    if keep_reserved is None:
                        continue
                    variables["ACTMEM_BUDGET"] = keep_reserved // 2
                row, digest = run(script, args.device, args.steps, work, f"actmem {policy}",
                                  actmem=variables)
                if policy == "keep" and "reserved_peak_bytes" in row:
                    keep_reserved = row["reserved_peak_bytes"]
                if digest is not None and plain_digest is not None:
                    row["same_bits"] = same_bits(plain_digest, digest)
                if row["returncode"] != 0 or not row.get("same_bits", False):
                    failed = True
                rows.append(row)
            # actmem must hold no more than PyTorch's own mechanism for the same thing (2 % slack
            # for the allocator's rounding): recompute against checkpoint, offload against
            # save_on_cpu. Both peaks are counted by actmem's allocator.
            by_label = {row["label"]: row for row in rows if row["returncode"] == 0}
            for ours, theirs in [("actmem recompute", "torch checkpoint"),
                                 ("actmem offload", "torch save_on_cpu")]:
                if ours in by_label and theirs in by_label:
                    held, reference = by_label[ours]["peak_bytes"], by_label[theirs]["peak_bytes"]
                    by_label[ours]["within_torch"] = held <= 1.02 * reference
                    failed |= not by_label[ours]["within_torch"]
            report[script] = rows
            base = plain.get("step_ms")
            print(f"\n{script} ({' '.join(WORKLOADS[args.device][script])}, {args.steps} steps, "
                  f"{args.device}; step: median after the first)")
            print("| row | peak (MiB) | step (ms) | step vs plain | bits vs plain |")
            print("|---|--:|--:|--:|---|")
            for row in rows:
                if row["returncode"] != 0:
                    print(f"| {row['label']} | FAILED: {row['error'].strip().splitlines()[-1]} |")
                    continue
                ratio = row["step_ms"] / base if base else float("nan")
                bits = {True: "same", False: "DIFFERENT"}.get(row.get("same_bits"), "–")
                peak = f"{row['peak_bytes'] / 2**20:.1f}" if row["peak_bytes"] >= 0 else "–"
                print(f"| {row['label']} | {peak} | {row['step_ms']:.1f} | {ratio:.2f} | {bits} |")
    with open(args.out, "w") as out:
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        json.dump({"torch": torch.__version__, "device": device_name,
                   "steps": args.steps, "workloads": report}, out, indent=2)
    print(f"\npython policies: {'FAILED' if failed else 'passed'}; records in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
