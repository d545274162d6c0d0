"""The prefill products alone: minig3n's BF16 kernels against NumPy's float32 BLAS, at E2B shapes.

    python -m tests.bench.bench_gemm [--tokens 128] [--threads 2] [--calls 15]

For each weight shape of an E2B layer ([out, in] = 8192 x 2048 gate/up, 2048 x 8192 down, 2048 x 2048 q/o,
512 x 2048 k/v) and a prompt of ``--tokens`` tokens, times in one process, calls alternating:
- ``tiles``: ``_gemm_kernels.gemm_parallel`` (6-row x 64-token outer-product tiles, the rest on ``gemm_rest``);
- ``dot4x4``: ``_gemm_kernels.gemm_rest`` over the whole product (4 x 4 dot-product tiles only: the prefill
  kernel before the outer-product tiles);
- ``sgemm``: NumPy's ``x @ W.T`` on a float32 copy of the weights (OpenBLAS; what the NumPy-only mode's
  ``bf16.blocked`` calls per block).
Prints GFLOP/s (2 * tokens * out * in per call) as best and median of ``--calls`` calls, the thread counts,
NumPy's BLAS kernel and ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``. No reference tier needed. Thread counts
are set (``NUMBA_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) before NumPy loads, so run it as a module.
"""
import argparse
import os
import sys
import time

SHAPES = [(8192, 2048), (2048, 8192), (2048, 2048), (512, 2048)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=128, help="rows of x (prompt tokens), default 128")
    ap.add_argument("--threads", type=int, default=2, help="numba and OpenBLAS threads, default 2")
    ap.add_argument("--calls", type=int, default=15, help="timed calls per kernel and shape, default 15")
    a = ap.parse_args(argv)
    if "numpy" in sys.modules:
        sys.exit("bench_gemm: run it as `python -m tests.bench.bench_gemm` (thread counts are set before NumPy loads)")
    for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[k] = str(a.threads)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")        # as `import minig3n` sets it
    import numpy as np
    from minig3n import _gemm_kernels as kernels, bf16
    from tests.bench.bench_e2b import blas_info
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    print(f"bench_gemm: {a.tokens} tokens, {a.threads} threads, {a.calls} calls; env {env}; {blas_info()}")
    rng = np.random.default_rng(0)
    for O, I in SHAPES:
        x = rng.standard_normal((a.tokens, I), dtype=np.float32)
        w32 = rng.standard_normal((O, I), dtype=np.float32) / np.float32(np.sqrt(I))
        bits = (w32.view(np.uint32) >> 16).astype(np.uint16)
        wide = bf16.widen(bits)
        y = np.empty((a.tokens, O), np.float32)
        sides = {"tiles": lambda: kernels.gemm_parallel(x, bits, y),
                 "dot4x4": lambda: kernels.gemm_rest(x, bits, y, 0, 0),
                 "sgemm": lambda: np.matmul(x, wide.T, out=y)}
        times = {name: [] for name in sides}
        for fn in sides.values():
            fn()                                                   # compile / warm up
        for _ in range(a.calls):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        flop = 2.0 * a.tokens * O * I
        cols = "  ".join(f"{name} {flop / min(ts) / 1e9:.0f} / {flop / float(np.median(ts)) / 1e9:.0f}"
                         for name, ts in times.items())
        print(f"{O} x {I}: GFLOP/s best / median: {cols}")


if __name__ == "__main__":
    main()
