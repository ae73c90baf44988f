"""The GPU check's Python half (benchmarks/gpu_check.sh runs it): kernels against float64, and the report.

    python benchmarks/gpu_check.py correctness --out DIR [--device cuda] [--size real|tiny]
        every kernel op (client_stats, robust_aggregate, nearest_neighbour_mixing, pairwise distances,
        distances to one row, median / trimmed mean of the order-statistics networks) at real sizes
        (n = 32 rows of d = 10^6; BN activations [n·B = 512, C = 256, 32×32]) against the plain-torch
        references computed in float64: DIR/correctness.json, one entry per op with its max error
    python benchmarks/gpu_check.py report --out DIR
        DIR/correctness.json, the CUDA tests' outcome (DIR/tests.txt, DIR/tests.rc) and the benchmarks'
        pytest-benchmark JSON (DIR/bench_kernels.json, DIR/bench_dsgd.json) into DIR/gpu_check.json and
        DIR/gpu_check.md (the table for benchmarks/RESULTS.md): achieved bandwidth against the device's
        peak and against its measured copy bandwidth, speedups over the torch composites, DSGD vmap vs loop.

`--size tiny` runs the same checks on a few hundred numbers (on CPU in CI), so the logic is tested
without a GPU. The error bound of an op is relative to the reference's magnitude: float32 kernels
against float64 references differ by rounding only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# Peak memory bandwidth (GB/s, vendor figures) by a substring of torch.cuda.get_device_name().
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0, "H100": 3350.0,
             "A100-SXM4-80GB": 2039.0, "A100 80GB": 1935.0, "A100": 1555.0, "L40S": 864.0, "L4": 300.0,
             "A10": 600.0, "V100": 900.0, "T4": 320.0}
SIZES = {"real": {"n": 32, "d": 10 ** 6, "clients": 16, "batch": 32, "channels": 256, "pixels": 32},
         "tiny": {"n": 9, "d": 300, "clients": 3, "batch": 4, "channels": 5, "pixels": 4}}
RELATIVE_TOLERANCE = 1e-4  # float32 rounding against float64, summed over up to 10^6 terms


def peak_gbps(name: str) -> float | None:
    """The vendor's peak bandwidth of the device called `name`, or None when the table does not know it."""
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def _error(got: torch.Tensor, want: torch.Tensor) -> dict:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    return {"max_abs_error": err, "scale": scale, "relative_error": err / scale if scale > 0 else err,
            "ok": bool(got.shape == want.shape and err <= RELATIVE_TOLERANCE * max(scale, 1.0))}


def check_kernels(device: str, size: str = "real", seed: int = 0) -> list[dict]:
    """Every kernel op on `device` at `size` against the float64 references: one dict per op."""
    from byzbn.kernels import client_stats, nearest_neighbour_mixing, reference, robust_aggregate
    from byzbn.kernels.order_statistics import median, trimmed_mean
    from byzbn.kernels.pairwise_distances import pairwise_sq_distances
    from byzbn.kernels.row_selection import sq_distances_to_row

    s = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    n, d = s["n"], s["d"]
    f = (n - 1) // 4
    x = torch.randn(n, d, generator=gen)
    x[:f] += 5.0  # f outlying rows, as the benchmarks use
    x64, xd = x.double(), x.to(device)
    results = []

    def record(op: str, shape, run, want) -> None:
        start = time.perf_counter()
        got = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        results.append({"op": op, "shape": list(shape), "device": device, "seconds": time.perf_counter() - start,
                        **_error(got, want)})

    for rule in ("mean", "median", "trimmed-mean"):
        for nnm in (False, True):
            y64 = reference.nnm(x64, f) if nnm else x64
            want = (reference.mean(y64) if rule == "mean" else reference.coordinate_median(y64)
                    if rule == "median" else reference.trimmed_mean(y64, f))
            record(f"robust_aggregate {'nnm+' if nnm else ''}{rule}", x.shape,
                   lambda rule=rule, nnm=nnm: robust_aggregate(xd, f, rule, nnm=nnm), want)
    record("nearest_neighbour_mixing", x.shape, lambda: nearest_neighbour_mixing(xd, f), reference.nnm(x64, f))
    record("pairwise_sq_distances", x.shape, lambda: pairwise_sq_distances(xd),
           reference.pairwise_sq_distances(x64))
    record("sq_distances_to_row", x.shape, lambda: sq_distances_to_row(xd, 1),
           ((x64 - x64[1]) ** 2).sum(dim=1))
    record("order_statistics.median", x.shape, lambda: median(xd), reference.coordinate_median(x64))
    record("order_statistics.trimmed_mean", x.shape, lambda: trimmed_mean(xd, f), reference.trimmed_mean(x64, f))
    del x64, xd

    a = torch.randn(s["clients"], s["batch"], s["channels"], s["pixels"], s["pixels"], generator=gen) * 2 + 1
    a64 = a.double()
    want_var, want_mean = torch.var_mean(a64, dim=(1, 3, 4), correction=0)
    ad = a.to(device)
    record("client_stats mean", a.shape, lambda: client_stats(ad).mean, want_mean)
    record("client_stats var", a.shape, lambda: client_stats(ad).var, want_var)
    return results


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _read(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _benchmarks(path: Path, peak: float | None) -> list[dict]:
    """One row per pytest-benchmark case: median time, GB/s, fraction of the peak and of the copy roofline."""
    rows = []
    for bench in _read(path, {}).get("benchmarks", []):
        info = bench.get("extra_info", {})
        median_s = bench.get("stats", {}).get("median")
        gbps = info.get("gbps")
        rows.append({"name": bench.get("name"), "median_ms": info.get("median_ms", median_s and median_s * 1e3),
                     "gbps": gbps, "peak_fraction": round(gbps / peak, 3) if gbps and peak else None,
                     "copy_fraction": info.get("roofline_fraction"),
                     "speedups": {k: v for k, v in info.items() if k.startswith("speedup")},
                     "loop_s": info.get("loop_s"), "batched_s": info.get("batched_s")})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('speedup_vs_', '')} {v:g}x" for k, v in value.items())
    return str(value)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def report(out: Path) -> dict:
    """gpu_check.json and gpu_check.md in `out` from the parts the shell script left there."""
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    peak = peak_gbps(name)
    correctness = _read(out / "correctness.json", [])
    tests_rc = (out / "tests.rc").read_text().strip() if (out / "tests.rc").is_file() else None
    tests_tail = (out / "tests.txt").read_text(errors="replace").strip().splitlines()[-1:] \
        if (out / "tests.txt").is_file() else []
    kernels = _benchmarks(out / "bench_kernels.json", peak)
    dsgd = _benchmarks(out / "bench_dsgd.json", peak)
    result = {"device": name, "memory_gb": round(props.total_memory / 1024 ** 3, 1) if props else None,
              "sm_count": props.multi_processor_count if props else None, "peak_gbps": peak,
              "torch": torch.__version__, "cuda_tests": {"rc": tests_rc, "summary": " ".join(tests_tail)},
              "correctness": correctness, "kernel_benchmarks": kernels, "dsgd_benchmarks": dsgd,
              "phases": _read(out / "phases.json", {})}
    _write(out / "gpu_check.json", result)
    lines = [f"GPU check on {name} (peak {peak or '?'} GB/s, torch {torch.__version__}); CUDA tests: "
             f"{result['cuda_tests']['summary'] or 'not run'}", "",
             "Kernels against float64 references:", ""]
    lines += _table(["op", "shape", "max abs error", "relative", "ok"],
                    [[c["op"], "x".join(map(str, c["shape"])), c["max_abs_error"], c["relative_error"], c["ok"]]
                     for c in correctness])
    lines += ["", "Kernel benchmarks (GB/s at the median; fractions of the device's peak and of its copy "
              "bandwidth):", ""]
    lines += _table(["case", "median ms", "GB/s", "of peak", "of copy", "speedup"],
                    [[k["name"], k["median_ms"], k["gbps"], k["peak_fraction"], k["copy_fraction"], k["speedups"]]
                     for k in kernels])
    lines += ["", "DSGD step, batched (vmap) against the per-client loop:", ""]
    lines += _table(["case", "batched s", "loop s", "speedup"],
                    [[k["name"], k["batched_s"], k["loop_s"],
                      k["loop_s"] / k["batched_s"] if k["loop_s"] and k["batched_s"] else None] for k in dsgd])
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["correctness", "report"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="real", choices=list(SIZES))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "correctness":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("gpu_check: no CUDA device", file=sys.stderr)
            return 1
        results = check_kernels(args.device, args.size)
        _write(out / "correctness.json", results)
        bad = [r["op"] for r in results if not r["ok"]]
        print(f"kernels vs float64: {len(results) - len(bad)}/{len(results)} within tolerance"
              + (f"; failing: {bad}" if bad else ""))
        return 1 if bad else 0
    report(out)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
