"""The integrals behind every solver coefficient, in one place.

An exponential-integrator step over a log-SNR step h = lambda_next - lambda integrates the
model prediction against a kernel:

    data form:   x_next = (sigma_next/sigma) x + alpha_next * int_0^h e^{-(h-u)} D(u) du
    noise form:  x_next = (alpha_next/alpha) x - sigma_next * int_0^h e^{+(h-u)} eps(u) du

and a classical step integrates against the constant kernel. Solvers replace D or eps by a
polynomial through known values; the weights of those values are moments of the kernel
against the Lagrange basis. The functions here work on Python floats and on torch scalars
(so that a tuner can differentiate coefficients with respect to the time grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _value(x) -> float:
    """A float of a float or a (possibly differentiable) torch scalar."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def exp(z):
    return torch.exp(z) if isinstance(z, torch.Tensor) else math.exp(z)


def expm1(z):
    return torch.expm1(z) if isinstance(z, torch.Tensor) else math.expm1(z)


def log(z):
    return torch.log(z) if isinstance(z, torch.Tensor) else math.log(z)


def phi(k: int, z):
    """phi_k(z) = sum_{n >= 0} z^n / (n + k)!, with phi_0 = exp.

    Series for |z| < 1/2 (no cancellation), the recurrence phi_{j+1} = (phi_j - 1/j!) / z
    from phi_1 = expm1(z) / z otherwise.
    """
    if k == 0:
        return exp(z)
    if abs(_value(z)) < 0.5:
        total, term = 0.0, 1.0 / math.factorial(k)
        for n in range(24):
            total = total + term
            term = term * z / (n + k + 1)
        return total
    value = expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def lagrange_basis(nodes: Sequence) -> list[list]:
    """Monomial coefficients of the Lagrange basis on ``nodes``: basis[j][m] is the
    coefficient of v^m in l_j(v), where l_j(nodes[i]) = (i == j)."""
    basis = []
    for j, vj in enumerate(nodes):
        coeffs = [1.0]
        denom = 1.0
        for k, vk in enumerate(nodes):
            if k == j:
                continue
            # multiply the polynomial by (v - vk)
            coeffs = [0.0, *coeffs]
            for m in range(len(coeffs) - 1):
                coeffs[m] = coeffs[m] - vk * coeffs[m + 1]
            denom = denom * (vj - vk)
        basis.append([c / denom for c in coeffs])
    return basis


def weights_from_moments(nodes: Sequence, moments: Sequence) -> list:
    """Quadrature weights w_j with sum_j w_j p(v_j) = sum_m p_m M_m for every polynomial p
    of degree < len(nodes), given the kernel moments M_m = int K(v) v^m."""
    if len(moments) < len(nodes):
        raise ValueError("need at least as many moments as nodes")
    return [sum(c * moments[m] for m, c in enumerate(row)) for row in lagrange_basis(nodes)]


def exponential_moments(h, count: int, form: str) -> list:
    """M_m = int_0^h K(u) (u/h)^m du for the exponential-integrator kernels.

    form="data":  K(u) = e^{-(h-u)},  M_m = h m! phi_{m+1}(-h)
    form="noise": K(u) = e^{+(h-u)},  M_m = h m! phi_{m+1}(h)
    """
    sign = {"data": -1.0, "noise": 1.0}[form]
    return [h * math.factorial(m) * phi(m + 1, sign * h) for m in range(count)]


def plain_moments(length, count: int) -> list:
    """M_m = int_0^L (u/L)^m du = L / (m + 1): the constant kernel of classical integrators."""
    return [length / (m + 1) for m in range(count)]


def exponential_weights(offsets: Sequence, h, form: str) -> list:
    """Weights of the values at log-SNR ``offsets`` (relative to the step start) that
    integrate their interpolating polynomial exactly against the data or noise kernel."""
    nodes = [u / h for u in offsets]
    return weights_from_moments(nodes, exponential_moments(h, len(nodes), form))


def plain_weights(offsets: Sequence, length) -> list:
    """Weights integrating the interpolating polynomial exactly over [0, length]."""
    nodes = [u / length for u in offsets]
    return weights_from_moments(nodes, plain_moments(length, len(nodes)))


def midpoint_weights(offset, h, form: str) -> list:
    """DPM-Solver's 'midpoint' second-order rule: the first moment applied to
    D_0 + (D_u - D_0) / (2 v), v = offset / h, where the exact rule would weight the
    difference by the second moment. Weights of (D_0, D_u)."""
    m0 = exponential_moments(h, 1, form)[0]
    v = offset / h
    return [m0 * (1 - 1 / (2 * v)), m0 / (2 * v)]


def quadrature_moments(kernel, a: float, b: float, count: int, breaks=(), points: int = 16) -> list:
    """M_m = int_a^b kernel(t) ((t - a) / (b - a))^m dt by Gauss-Legendre on each smooth
    piece of [a, b] (``breaks`` are the kinks of a piecewise-smooth kernel)."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    lo, hi = min(a, b), max(a, b)
    edges = [lo, *sorted(x for x in breaks if lo < x < hi), hi]
    left, right = np.asarray(edges[:-1]), np.asarray(edges[1:])
    t = (0.5 * (right - left)[:, None] * (nodes[None, :] + 1) + left[:, None]).ravel()
    w = (0.5 * (right - left)[:, None] * weights[None, :]).ravel()
    if b < a:
        w = -w
    k = np.asarray(kernel(t), dtype=np.float64)
    v = (t - a) / (b - a)
    return [float(np.sum(w * k * v**m)) for m in range(count)]


def solve_small(matrix: Sequence[Sequence], rhs: Sequence) -> list:
    """Solve a small dense linear system by Gaussian elimination with partial pivoting,
    on floats or torch scalars (UniPC's order conditions are at most 3 x 3)."""
    n = len(rhs)
    a = [[*row, rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(_value(a[r][col])))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            a[r] = [a[r][k] - f * a[col][k] for k in range(n + 1)]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (a[r][n] - sum(a[r][k] * x[k] for k in range(r + 1, n))) / a[r][r]
    return x
