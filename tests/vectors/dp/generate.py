"""Regenerate the DP known-answer vectors in this directory (see PROVENANCE.md).

Run from the repository root: ``python tests/vectors/dp/generate.py [--skip-pld]``.
Uses mpmath (50 significant digits) for closed forms and dp-accounting's
pessimistic PLD accountant for the accountant grid; never the code under test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mpmath as mp

HERE = Path(__file__).resolve().parent
mp.mp.dps = 50


def sampled_gaussian_rdp() -> list[dict[str, float]]:
    """Exact RDP of the Poisson-subsampled Gaussian at integer orders (Mironov, Talwar, Zhang 2019, Sec. 3.3)."""
    out = []
    for q in ("0.001", "0.01", "0.0354714750", "0.1", "0.5", "1"):
        for z in ("0.5", "1", "1.2", "3"):
            for alpha in (2, 3, 8, 32, 128):
                qq, zz = mp.mpf(q), mp.mpf(z)
                a = mp.fsum(
                    mp.binomial(alpha, k) * (1 - qq) ** (alpha - k) * qq**k * mp.e ** ((k * k - k) / (2 * zz * zz))
                    for k in range(alpha + 1)
                )
                out.append({"q": float(qq), "z": float(zz), "alpha": alpha, "rdp": float(mp.log(a) / (alpha - 1))})
    return out


def analytic_gaussian() -> list[dict[str, float]]:
    """Epsilon of the Gaussian mechanism with mu = 1/z (Balle & Wang 2018, Thm. 8), solved with mpmath."""
    out = []
    for z in ("0.5", "1", "3", "10", "30"):
        for delta in ("1e-5", "1e-3"):
            mu = 1 / mp.mpf(z)
            d = mp.mpf(delta)

            def f(eps: mp.mpf, mu: mp.mpf = mu, d: mp.mpf = d) -> mp.mpf:
                return mp.ncdf(-eps / mu + mu / 2) - mp.e**eps * mp.ncdf(-eps / mu - mu / 2) - d

            # f is decreasing in eps: plain bisection to 150 bits.
            lo, hi = mp.mpf(0), mp.mpf(400)
            if f(lo) <= 0:
                hi = lo
            for _ in range(150):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
            eps = hi
            out.append({"z": float(mp.mpf(z)), "delta": float(d), "epsilon": float(eps)})
    return out


def discrete_gaussian_pmf() -> list[dict[str, object]]:
    """P(y) of N_Z(0, sigma^2) for |y| <= 12 sigma + 2, normalised by the full theta sum."""
    out: list[dict[str, object]] = []
    for sigma in ("0.5", "1", "3", "10.5"):
        s = mp.mpf(sigma)
        norm = mp.nsum(lambda y: mp.e ** (-(y * y) / (2 * s * s)), [-mp.inf, mp.inf])
        top = int(12 * float(s)) + 2
        pmf = {str(y): float(mp.e ** (-(y * y) / (2 * s * s)) / norm) for y in range(-top, top + 1)}
        variance = mp.nsum(lambda y: y * y * mp.e ** (-(y * y) / (2 * s * s)), [-mp.inf, mp.inf]) / norm
        out.append({"sigma": float(s), "pmf": pmf, "variance": float(variance)})
    return out


def pld_grid() -> list[dict[str, float]]:
    """dp-accounting pessimistic PLD epsilon on the issue's grid, interval scaled to the answer."""
    import dp_accounting as dpa

    out = []
    for q in (0.001, 0.01, 0.1, 1.0):
        for s in (0.5, 1.0, 3.0):
            for t in (1, 100, 10_000):
                # A first pass at 1e-3 sizes the interval; the reference uses 2e-4 of epsilon, clamped to [1e-6, 1e-4].
                a = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
                a.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), t)
                rough = a.get_epsilon(1e-5)
                interval = max(1e-6, min(1e-4, rough * 2e-4))
                t0 = time.time()
                a = dpa.pld.PLDAccountant(value_discretization_interval=interval)
                a.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), t)
                eps = a.get_epsilon(1e-5)
                out.append({"q": q, "sigma": s, "rounds": t, "delta": 1e-5, "interval": interval, "epsilon": eps})
                print(q, s, t, eps, f"{time.time() - t0:.1f}s", flush=True)
    return out


def main() -> None:
    (HERE / "sampled_gaussian_rdp.json").write_text(json.dumps(sampled_gaussian_rdp(), indent=1) + "\n")
    (HERE / "analytic_gaussian.json").write_text(json.dumps(analytic_gaussian(), indent=1) + "\n")
    (HERE / "discrete_gaussian_pmf.json").write_text(json.dumps(discrete_gaussian_pmf(), indent=1) + "\n")
    if "--skip-pld" not in sys.argv:
        (HERE / "pld_grid_reference.json").write_text(json.dumps(pld_grid(), indent=1) + "\n")


if __name__ == "__main__":
    main()
