"""Canonical float32 dot products: the same bits on any machine, thread count or block size.

Every similarity, projection and norm that reaches a catalog or a digest is computed here as

    canonical(a_i, b_j) = f32( f64( Σ_k a_ik · b_kj ) )

— the exact real dot product of float32 vectors, rounded to the nearest float64 and then to the
nearest float32 (``f32(math.fsum(exact products))``). It is a pure mathematical function of the
input bits, so no summation order, BLAS kernel, thread count, SIMD width or FMA unit can change it.

How it is computed fast (the rounding argument)
-----------------------------------------------
1. **Products are exact in float64.** A float32 has a 24-bit significand, so ``a·b`` has at most
   48 bits and an exponent far inside float64's range (≥ 2^-298): ``f64(a)·f64(b)`` is exact, and
   so an FMA and a multiply-then-add give the same float64 result. Nothing is subnormal in float64,
   so flush-to-zero modes do not matter either.
2. **Any float64 summation is close.** Whatever order BLAS uses (blocked, tree, threaded, FMA),
   each of the ``m`` non-zero products passes through at most ``m - 1`` rounded additions
   (adding an exact zero is exact), so the computed ``v`` obeys
   ``|v - x| ≤ γ_m · Σ_k |a_ik b_kj| ≤ γ_m · ‖a_i‖ · ‖b_j‖``, with ``γ_m = m·u / (1 - m·u)``,
   ``u = 2^-53`` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1) and
   Cauchy–Schwarz for the second step.
3. **Certify, else recompute.** With ``e = (2·γ_m + 4u)·‖a_i‖·‖b_j‖`` (a factor 2 of safety for
   the norms' own rounding, and ``4u`` to cover the rounding of ``v ± e``), the exact ``x`` and
   hence ``f64(x)`` lie in ``[v - e, v + e]``. Rounding to float32 is monotone, so when
   ``f32(v - e) == f32(v + e)`` that float32 *is* ``f32(f64(x))``: ``f64(x)`` lies between
   the two float64 endpoints too, as rounding to float64 is monotone and they are float64 numbers.
4. **The few others are recomputed twice as precisely** (a rate of about 1e-3 for unit vectors,
   see the benchmarks): a compensated sum (Ogita, Rump & Oishi 2005, *Sum2*: Knuth's error-free
   TwoSum, no multiply to fuse) gives ``r`` with ``|r - x| ≤ u·|x| + γ_m²·Σ|a_ik b_kj|``, and the
   same certificate is applied with that bound (doubled, plus ``4u·|r|`` for the endpoints'
   rounding). Only entries within a few float64 ulps of a float32 rounding boundary remain; they
   get :func:`math.fsum`, correctly rounded: ``f64(x)`` exactly.

Every branch gives ``f32(f64(x))``, so the result never depends on which branch ran. An exact
zero is returned as ``+0.0`` (a BLAS may produce ``-0.0``), and the certificate compares bit
patterns, so ``±0.0`` is never mistaken for one value.
The rest of a canonical pipeline is elementwise IEEE arithmetic (``+ - * / sqrt`` are correctly
rounded on every IEEE-754 machine).

Limits: the inputs must be finite float32 values (float64 arrays holding float32 values are
accepted); a non-finite input gives a non-finite output with no canonical promise.

* :func:`canonical_matmul`: ``(M, n) @ (n, K)``.
* :func:`canonical_pair_dots`: ``a[rows[p]] · b[cols[p]]`` for a list of pairs (row-major ``b``).
* :func:`unit_rows`: row ℓ2-normalisation with a canonical norm.
* :func:`float32_screen_error`: how far a fast float32 product may lie from the canonical value
  (for screens that recompute only the entries near a decision).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._parallel import map_slices

U64 = 2.0**-53  # unit roundoff of float64
U32 = 2.0**-24  # unit roundoff of float32


def gamma(m, u: float = U64):
    """Higham's ``γ_m = m·u / (1 - m·u)``: the relative error bound of an ``m``-term sum (arrays ok)."""
    m = np.asarray(m, np.float64)
    return m * u / (1.0 - m * u)


def float32_screen_error(d: int, norm_a, norm_b):
    """A bound on ``|S - canonical|`` for a float32 BLAS dot product ``S`` of ``d``-vectors with
    ℓ2 norms ``norm_a``, ``norm_b`` (arrays broadcast), for any summation order, FMA or not.

    ``S`` is within ``γ_d(2^-24)·‖a‖·‖b‖`` of the exact sum (plus ``d·2^-125`` for products that
    underflow), and the canonical value within ``2^-23·‖a‖·‖b‖`` of it. Screens that compare a
    float32 product with a threshold (``dedup``) or with another product (``kmeans.assign``)
    multiply this by their own safety factor: only values inside the margin are recomputed.
    """
    return (gamma(d, U32) + 2.0 * U32) * (np.asarray(norm_a, np.float64) * norm_b) + d * 2.0**-125


def canonical_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``f32(f64(exact a @ b))`` for float32 ``a (M, n)`` and ``b (n, K)``: float32 ``(M, K)``.

    One float64 BLAS product, a certified-rounding check per entry, and a recomputation of the few
    entries the check cannot certify (see the module docstring). A Fortran-ordered ``b`` (the
    transpose of a row-major ``(K, n)`` array) avoids one copy of ``b``.
    """
    a, b = _as_float32(a), _as_float32(b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {a.shape} @ {b.shape}")
    v = _float64_product(a, b)
    bound = _error_bound(np.count_nonzero(a, axis=1)[:, None], row_norms(a)[:, None], row_norms(b.T)[None, :])
    rows, cols = np.nonzero(~_certain(v, bound))
    out = v.astype(np.float32)
    # b's columns as rows for the recomputation: free when b is Fortran-ordered (a transposed view)
    out[rows, cols] = _recompute(a, np.ascontiguousarray(b.T), rows, cols)
    return _plus_zero(out)


def canonical_pair_dots(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    norm_a: np.ndarray | None = None,
    norm_b: np.ndarray | None = None,
) -> np.ndarray:
    """``f32(f64(exact a[rows[p]] · b[cols[p]]))`` for float32 ``a (M, n)``, ``b (K, n)``: float32 ``(P,)``.

    Used where only a few entries of ``a @ b.T`` are needed (the nearest centroid's similarity).
    ``norm_a (M,)`` and ``norm_b (K,)``, the rows' ℓ2 norms to within a relative ``γ_n``, may be
    passed when the caller has them already.
    """
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    rows = np.ascontiguousarray(rows, np.int64)
    cols = np.ascontiguousarray(cols, np.int64)
    norm_a = row_norms(a) if norm_a is None else norm_a
    norm_b = row_norms(b) if norm_b is None else norm_b
    v = (
        np.concatenate(
            map_slices(
                lambda i, j: _pair_dots_kernel(a, b, rows[i:j], cols[i:j]), len(rows), _threads(), min_per_thread=4096
            )
        )
        if len(rows)
        else np.zeros(0)
    )
    bound = _error_bound(a.shape[1], norm_a[rows], norm_b[cols])
    unsure = np.flatnonzero(~_certain(v, bound))
    out = v.astype(np.float32)
    out[unsure] = _recompute(a, b, rows[unsure], cols[unsure])
    return _plus_zero(out)


def row_norms(x: np.ndarray) -> np.ndarray:
    """ℓ2 norms of the rows of ``x (N, n)`` in float64, within a relative ``γ_n`` (not canonical:
    only for error bounds, which carry a factor 2 of safety)."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        x = np.ascontiguousarray(x)
        parts = map_slices(lambda i, j: _squares_kernel(x[i:j]), len(x), _threads(), min_per_thread=4096)
        return np.sqrt(np.concatenate(parts)) if len(x) else np.zeros(0)
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def canonical_squared_norms(z: np.ndarray) -> np.ndarray:
    """``f32(f64(exact Σ_k z_ik²))`` per row of float32 ``z (N, D)``: float32 ``(N,)``."""
    z = np.ascontiguousarray(z, np.float32)
    idx = np.arange(len(z), dtype=np.int64)
    return canonical_pair_dots(z, z, idx, idx)


def unit_rows(z: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of float32 ``z (N, D)`` divided by their ℓ2 norm (at least ``eps``): float32 ``(N, D)``.

    The norm is ``sqrt`` of the canonical squared norm, and the division is one correctly rounded
    float64 operation per entry, so each output row depends on its input row's bits only.
    """
    z = np.ascontiguousarray(z, np.float32)
    norm = np.maximum(np.sqrt(canonical_squared_norms(z).astype(np.float64)), eps)
    return (z.astype(np.float64) / norm[:, None]).astype(np.float32)


def uncertain_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the entries of ``a @ b`` that the float64 product cannot certify (a benchmark
    figure: the entries that go to the slower recomputation)."""
    a, b = _as_float32(a), _as_float32(b)
    bound = _error_bound(np.count_nonzero(a, axis=1)[:, None], row_norms(a)[:, None], row_norms(b.T)[None, :])
    return float(1.0 - _certain(_float64_product(a, b), bound).mean())


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` as a 2-d float32 array; float64 input must hold float32 values (products stay exact)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {x.shape}")
    x32 = np.asarray(x, np.float32)  # C or Fortran order kept (see canonical_matmul)
    if x.dtype != np.float32 and not np.array_equal(x32.astype(x.dtype), x, equal_nan=True):
        raise ValueError("canonical products need float32 values; round the input to float32 first")
    return x32


def _float64_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64 by torch's float64 BLAS (any thread count: the result is only certified, not trusted)."""
    import torch

    with torch.inference_mode():
        return (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()


def _error_bound(m, norm_a, norm_b) -> np.ndarray:
    """``e ≥ |v - x|`` with margin: ``(2·γ_m + 4u)·‖a‖·‖b‖`` (see the module docstring)."""
    return (2.0 * gamma(m) + 4.0 * U64) * (norm_a * norm_b)


def _certain(v: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """True where every float64 in ``[v - bound, v + bound]`` rounds to the same float32."""
    with np.errstate(invalid="ignore", over="ignore"):
        lo = (v - bound).astype(np.float32)
        hi = (v + bound).astype(np.float32)
    # bits, not ==: -0.0 and +0.0 are different results. Non-finite v: no recomputation (fsum
    # would raise on inf - inf); it stays non-finite
    return (lo.view(np.uint32) == hi.view(np.uint32)) | ~np.isfinite(v)


def _plus_zero(x: np.ndarray) -> np.ndarray:
    x[x == 0] = 0.0  # -0.0 → +0.0: the canonical zero
    return x


def _recompute(a: np.ndarray, b_rows: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Canonical ``a[rows[p]] · b_rows[cols[p]]`` (float32 ``(P,)``) for entries the float64 product
    could not certify: a certified compensated sum, else :func:`math.fsum` (docstring, point 4)."""
    if not len(rows):
        return np.zeros(0, np.float32)
    r, abs_sum = _compensated_kernel(a, b_rows, np.asarray(rows, np.int64), np.asarray(cols, np.int64))
    bound = 2.0 * (U64 * np.abs(r) + gamma(a.shape[1]) ** 2 * abs_sum) + 4.0 * U64 * np.abs(r)
    out = r.astype(np.float32)
    unsure = np.flatnonzero(~_certain(r, bound))
    out[unsure] = _fsum_pairs(a, b_rows, rows[unsure], cols[unsure])
    return out


def _threads() -> int:
    """Threads for the pair kernels: as many as torch may use (the pipeline's tasks set 1)."""
    import torch

    return torch.get_num_threads()


def _fsum_pairs(a: np.ndarray, b_rows: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Correctly rounded float64 sums of the exact products of ``a[r]`` and ``b_rows[c]``, as float32."""
    out = np.empty(len(rows), np.float32)
    for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        terms = np.asarray(a[r], np.float64) * np.asarray(b_rows[c], np.float64)  # exact products
        out[p] = math.fsum(terms[terms != 0].tolist())
    return out


@numba.njit(cache=True, nogil=True)
def _pair_dots_kernel(a, b, rows, cols):  # pragma: no cover - compiled
    # float64 dot products of float32 rows; four partial sums keep the adds pipelined (the order
    # does not matter: the result is certified or recomputed by the caller)
    out = np.empty(rows.shape[0], np.float64)
    n = a.shape[1]
    n4 = n - n % 4
    for p in range(rows.shape[0]):
        r, c = rows[p], cols[p]
        s0 = s1 = s2 = s3 = 0.0
        for k in range(0, n4, 4):
            s0 += np.float64(a[r, k]) * np.float64(b[c, k])
            s1 += np.float64(a[r, k + 1]) * np.float64(b[c, k + 1])
            s2 += np.float64(a[r, k + 2]) * np.float64(b[c, k + 2])
            s3 += np.float64(a[r, k + 3]) * np.float64(b[c, k + 3])
        for k in range(n4, n):
            s0 += np.float64(a[r, k]) * np.float64(b[c, k])
        out[p] = (s0 + s1) + (s2 + s3)
    return out


@numba.njit(cache=True, nogil=True)
def _compensated_kernel(a, b, rows, cols):  # pragma: no cover - compiled
    # Sum2 of the exact float64 products: TwoSum carries every addition's rounding error into c
    # (adds and subtracts only, in this order: nothing for a compiler to fuse or reassociate
    # without fastmath); also the sum of |products| for the error bound
    out = np.empty(rows.shape[0], np.float64)
    abs_sum = np.empty(rows.shape[0], np.float64)
    for p in range(rows.shape[0]):
        ar = a[rows[p]]
        bc = b[cols[p]]
        s = 0.0
        c = 0.0
        t = 0.0
        for k in range(ar.shape[0]):
            x = np.float64(ar[k]) * np.float64(bc[k])
            y = s + x
            z = y - s
            c += (s - (y - z)) + (x - z)
            s = y
            t += abs(x)
        out[p] = s + c
        abs_sum[p] = t
    return out, abs_sum


@numba.njit(cache=True, nogil=True)
def _squares_kernel(x):  # pragma: no cover - compiled
    # float64 sums of squares of float32 rows (for error bounds only)
    out = np.empty(x.shape[0], np.float64)
    n = x.shape[1]
    n4 = n - n % 4
    for i in range(x.shape[0]):
        s0 = s1 = s2 = s3 = 0.0
        for k in range(0, n4, 4):
            y0, y1, y2, y3 = (
                np.float64(x[i, k]),
                np.float64(x[i, k + 1]),
                np.float64(x[i, k + 2]),
                np.float64(x[i, k + 3]),
            )
            s0 += y0 * y0
            s1 += y1 * y1
            s2 += y2 * y2
            s3 += y3 * y3
        for k in range(n4, n):
            y = np.float64(x[i, k])
            s0 += y * y
        out[i] = (s0 + s1) + (s2 + s3)
    return out


# ---------------------------------------------------------------------------------------------
# log2 from IEEE basic operations only (for entropy)
# ---------------------------------------------------------------------------------------------

_SQRT_HALF = 0.7071067811865476
_LOG2_E = 1.4426950408889634  # 1 / ln 2
_ATANH_TERMS = 12  # |s| <= 0.1716 on [sqrt(1/2), sqrt(2)): s^(2*12) < 1e-18


def portable_log2(x) -> np.ndarray:
    """``log2(x)`` of positive float64 values using only ``frexp`` and ``+ - * /``.

    libm's ``log2`` (and numpy's SIMD variants) may pick another code path on another CPU (FMA or
    AVX-512 versions chosen at run time) and differ in the last bit; basic IEEE operations are
    correctly rounded everywhere, and numpy never fuses two ufunc calls, so this result is the same
    on every machine. Accuracy: within a few float64 ulps (x = m·2^e, m ∈ [√½, √2),
    ln m = 2·atanh((m-1)/(m+1)) summed by Horner's rule).
    """
    x = np.asarray(x, np.float64)
    m, e = np.frexp(x)  # exact: x = m * 2**e, m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)  # exact scaling by 2
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    acc = np.full_like(s, 1.0 / (2 * _ATANH_TERMS + 1))
    for k in range(_ATANH_TERMS - 1, -1, -1):
        acc = acc * s2 + 1.0 / (2 * k + 1)
    return e + (2.0 * s * acc) * _LOG2_E
