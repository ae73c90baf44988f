"""Compile every Triton kernel of byzbn.kernels for an NVIDIA GPU ahead of time, without one.

    TRITON_INTERPRET= python -m byzbn.kernels._compile_check [--arch 90] [--shapes quick|all]

The interpreter (which runs the kernels' tests on CPU) executes the kernel bodies as Python with NumPy,
so it accepts code the GPU compiler rejects (and vice versa). This check runs Triton's real pipeline
(TTIR → TTGIR → LLVM → PTX → cubin with the bundled ptxas) for the block shapes the launchers pick for
representative inputs, so a CPU-only CI still catches code that would not compile for the H100 (sm_90).
It must run with TRITON_INTERPRET unset, i.e. in its own process. Exit status 0: all compiled.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys


def _configurations(shapes: str):
    """(kernel, signature, constexprs, options) for the launchers' choices on representative inputs."""
    import triton.language as tl

    cs, pd, ra = (importlib.import_module(f"byzbn.kernels.{name}")
                  for name in ("client_stats", "pairwise_distances", "robust_aggregate"))

    stats_shapes = [(50, 64, 1024, "*fp32"), (64, 64, 1, "*bf16")]
    dist_rows = [16, 64]
    mix_cases = [(64, 2**24, True, 1), (64, 2**24, True, 2), (64, 2**24, True, 0), (16, 2**20, False, 1)]
    if shapes == "all":
        stats_shapes += [(8, 512, 16, "*fp16"), (50, 64, 1024, "*fp64")]
        mix_cases += [(256, 2**20, True, 1), (128, 2**20, True, 2), (256, 2**20, False, 2)]
    for b, c, s, xtype in stats_shapes:
        block_b, block_c, block_s = cs.tile_shape(b, c, s)
        acc = "*fp64" if xtype == "*fp64" else "*fp32"
        yield (cs._client_stats_kernel,
               dict(x_ptr=xtype, mean_ptr=acc, m2_ptr=acc, B="i32", C="i32", S="i32", b_per_split="i32"),
               dict(BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_S=block_s,
                    ACC=tl.float64 if xtype == "*fp64" else tl.float32), {})
    for n in dist_rows:
        block_i, block_k = pd.tile_shape(n)
        yield (pd._pairwise_sq_dist_kernel,
               dict(x_ptr="*fp32", tiles_ptr="*i32", partial_ptr="*fp32", n="i32", d="i32", chunk_len="i32",
                    stride_xn="i32", stride_xd="i32"),
               dict(BLOCK_I=block_i, BLOCK_K=block_k, INNER=64), {})
    for n, d, mix, rule in mix_cases:
        n_pad, block_d, block_k, num_warps = ra.tile_shape(n, d)
        yield (ra._mix_aggregate_kernel,
               dict(x_ptr="*fp32", w_ptr="*fp32", bad_ptr="*i32", num_bad_ptr="*i32", out_ptr="*fp32", n="i32",
                    d="i32", f="i32", stride_xn="i32", stride_xd="i32", stride_wn="i32"),
               dict(N_PAD=n_pad, BLOCK_D=block_d, BLOCK_K=block_k, MIX=mix, RULE=rule), dict(num_warps=num_warps))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for the H100")
    parser.add_argument("--shapes", choices=("quick", "all"), default="quick")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels by Python functions", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    for kernel, signature, constexprs, options in _configurations(args.shapes):
        src = ASTSource(fn=kernel, signature={**signature, **{k: "constexpr" for k in constexprs}},
                        constexprs=constexprs)
        compiled = triton.compile(src, target=target, options=options)
        if "cubin" not in compiled.asm:
            print(f"{kernel.__name__} {constexprs}: no cubin produced", file=sys.stderr)
            return 1
        print(f"{kernel.__name__} {constexprs} {options}: sm_{args.arch} cubin, "
              f"{compiled.metadata.shared} B shared memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
