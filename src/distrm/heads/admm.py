"""First-order solver for L1-penalised quantile regression: ADMM with a duality-gap certificate.

Kept for problems too large for the interior-point method's d x d Newton systems on the
machine at hand (paper scale, 60k items x 4096 features, on a CPU); the default solver is
:mod:`distrm.heads.ipm`, which converges on the degenerate LPs of real rating data where this
method stalls (discrete ratings, many raters per item, more features than items).

ADMM on an augmented quantile regression: the L1 term is written as d pseudo-rows
  ``s * e_j`` with target 0 (alpha |beta_j| = (alpha / s) |0 - s beta_j|), so the problem is
  min f(z) s.t. z = y~ - X~ theta with f separable. The theta-step is least squares with the
  matrix ``X_s^T X_s + s^2 I`` -- the same for every level, every penalty rho and every
  sample weight (weights only enter the prox) -- so it is inverted once per attribute
  and every iteration is two matmuls ``[n, d] x [d, K]`` plus elementwise proxes. Columns
  are centred (exact reparametrisation: the intercept is free) and scaled to unit variance
  (the L1 weight becomes alpha / sigma_j), which makes the intercept decouple and the
  iteration well conditioned. Over-relaxation (1.6) and residual balancing of rho per
  level; rho changes cost nothing because the factorisation does not depend on it.
a duality-gap certificate as the stopping rule: the LP dual is
  ``max_nu sum_i nu_i y_i`` s.t. ``nu_i in [w_i (tau-1), w_i tau] / W``, ``sum_i nu_i = 0``
  (intercept), ``|x_j^T nu| <= alpha``. ADMM's multiplier is clipped to the box, shifted
  back to sum 0 (bisection on a weight-proportional shift) and scaled into the
  ``|x_j^T nu| <= alpha`` region, which gives a feasible dual point and a lower bound D
  on the optimum. We stop when ``(P - D) / P <= tol`` for every head, so the reported
  objective is *proved* within ``tol`` of the LP optimum (``duality_gap_``).

a safe start: each head starts from the better (in the exact objective) of a ridge fit
  and the intercept-only model, and the returned iterate is never worse than that start. With
  more features than distinct rated items (common for real attributes: a few hundred items,
  d = 384..4096) the ridge start interpolates with a large L1 norm, far from the optimum.

"""

from __future__ import annotations

import logging
import math

import torch

from distrm.heads.objective import pinball

logger = logging.getLogger(__name__)

_OVER_RELAX = 1.6


def admm_fit(
    X: torch.Tensor,
    index: torch.Tensor,
    target: torch.Tensor,
    w: torch.Tensor,
    rows: list[torch.Tensor],
    levels: torch.Tensor,
    alphas: list[float],
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    check_every: int = 20,
    pseudo_scale: float = 0.1,
    dev: torch.device | None = None,
    cdt: torch.dtype = torch.float32,
    verbose: bool = False,
) -> dict:
    """Solve all K levels of a few attributes together (rows padded to the largest). ``rows[j]``
    are the target rows of attribute j (``index`` into X, ``target``, weight ``w``), ``alphas[j]``
    its L1 penalty. Returns coef [B, K, d] and intercept [B, K] in X's units, objective and
    certified gap [B, K], n_iter."""
    dev = dev or X.device
    Bn, d, K = len(rows), X.shape[1], len(levels)
    n_max = max(len(r) for r in rows)
    f64 = torch.float64
    Xs = torch.zeros(Bn, n_max, d, dtype=cdt, device=dev)
    y = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)
    om = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)  # w_i / W (0 on padding)
    mask = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)
    mu = torch.zeros(Bn, d, dtype=f64, device=dev)
    sig = torch.ones(Bn, d, dtype=f64, device=dev)
    Ainv = torch.zeros(Bn, d, d, dtype=cdt, device=dev)
    s = torch.zeros(Bn, 1, 1, dtype=f64, device=dev)
    n_real = torch.zeros(Bn, 1, 1, dtype=f64, device=dev)
    for j, r in enumerate(rows):
        n = len(r)
        if isinstance(X, torch.Tensor):
            Xm = X[index[r].to(X.device)].to(device=dev, dtype=f64)
            if fit_intercept:
                mu[j] = Xm.mean(0)
                Xm = Xm - mu[j]
            sd = _floor(Xm.pow(2).mean(0).sqrt())
            sig[j] = sd
            Xm = Xm / sd
            G = Xm.T @ Xm
            Xs[j, :n] = Xm.to(cdt)
            del Xm
        else:  # rows read in blocks (distrm.heads.blocks): nothing n x d in float64
            G = _gram_blocks(X, index[r], fit_intercept, mu[j], sig[j], Xs[j])
        s2 = pseudo_scale * n
        G.diagonal().add_(s2)
        L = torch.linalg.cholesky(G)
        Ainv[j] = torch.cholesky_inverse(L).to(cdt)
        del G, L
        s[j] = math.sqrt(s2)
        y[j, :n, 0] = target[r].to(device=dev, dtype=f64)
        ww = w[r].to(device=dev, dtype=f64)
        om[j, :n, 0] = ww / ww.sum()
        mask[j, :n] = 1
        n_real[j] = n
    tau = levels.to(device=dev, dtype=f64).view(1, 1, K)
    pen = (torch.tensor(alphas, dtype=f64, device=dev)[:, None] / sig).unsqueeze(-1)  # [B, d, 1]: L1 weight of scaled coefficient j
    beta, b, P, gap, n_iter = _admm(
        Xs, y, om, mask, n_real, tau, pen, Ainv, s, fit_intercept, tol, max_iter, check_every, verbose
    )
    coef = (beta / sig.unsqueeze(-1)).transpose(1, 2)  # [B, K, d] in original units
    intercept = b - torch.einsum("bd,bkd->bk", mu, coef) if fit_intercept else torch.zeros_like(b)
    return {"coef": coef, "intercept": intercept, "objective": P, "gap": gap, "n_iter": n_iter}


def _floor(sd: torch.Tensor) -> torch.Tensor:
    """Column spreads with (numerically) constant columns set to 1."""
    return torch.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, torch.ones_like(sd))


def _gram_blocks(Z, ii: torch.Tensor, fit_intercept: bool, mu: torch.Tensor, sig: torch.Tensor, out: torch.Tensor
                 ) -> torch.Tensor:
    """The in-memory path's centring, scaling and Gram matrix for the rows ``ii`` of a block
    row source ``Z`` (:class:`~distrm.heads.blocks.StandardizedRows`), in three passes over
    blocks: fills ``mu`` and ``sig`` [d] and ``out[:n]`` (the scaled rows, in ``out``'s
    dtype), returns the float64 Gram matrix. Equal to the in-memory path up to float
    rounding (the sums are taken in blocks)."""
    n, d = len(ii), Z.shape[1]
    f64 = torch.float64
    dev = out.device
    if fit_intercept:
        tot = torch.zeros(d, dtype=f64)
        for _, b in Z.blocks(ii):
            tot += b.sum(0)
        mu.copy_(tot / n)
    sq = torch.zeros(d, dtype=f64)
    for _, b in Z.blocks(ii):
        sq += b.sub_(mu.cpu()).pow_(2).sum(0)  # blocks are fresh copies: in place
    sig.copy_(_floor((sq / n).sqrt()))
    G = torch.zeros(d, d, dtype=f64, device=dev)
    for s, b in Z.blocks(ii):
        b = b.sub_(mu.cpu()).div_(sig.cpu()).to(dev)
        G += b.T @ b
        out[s : s + len(b)] = b.to(out.dtype)
    return G


def _prox_pinball(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """argmin_z c * rho_tau(z) + (z - v)^2 / 2 with lo = c (tau - 1), hi = c tau (c >= 0):
    v shrunk towards 0 by the pinball slopes, i.e. ``v - clamp(v, lo, hi)`` (two fused ops)."""
    return v - torch.clamp(v, lo, hi)


def _primal_objective(
    Xs: torch.Tensor, beta: torch.Tensor, b: torch.Tensor, y: torch.Tensor, om: torch.Tensor,
    mask: torch.Tensor, tau: torch.Tensor, pen: torch.Tensor,
) -> torch.Tensor:
    """[B, K] the objective of heads (beta [B, d, K], b [B, 1, K]) in the scaled problem, in
    float64 (the matmul in X's dtype): sum_i om_i rho_tau(y_i - x_i^T beta - b) + sum_j pen_j |beta_j|."""
    fit = (Xs @ beta.to(Xs.dtype)).double() + b.double()
    return (om * pinball((y - fit) * mask, tau)).sum(1) + (pen * beta.double().abs()).sum(1)


def _dual_bound(
    nu: torch.Tensor,
    om: torch.Tensor,
    tau: torch.Tensor,
    y: torch.Tensor,
    Xt: torch.Tensor,
    pen: torch.Tensor,
    intercept: bool,
) -> torch.Tensor:
    """A feasible point of the LP dual built from an estimate ``nu [B, n, K]``; returns its
    value sum_i nu_i y_i [B, K], a lower bound on every head's optimum."""
    lo, hi = om * (tau - 1), om * tau
    nu = torch.minimum(torch.maximum(nu, lo), hi)
    if intercept:  # shift by c * om (clipped) so that sum nu = 0; the sum is monotone in c
        a = torch.full_like(nu[:, :1, :], -1.0)
        bnd = torch.full_like(a, 1.0)
        for _ in range(40):  # bracket 2^-40: the final re-centring moves nu by <= 1e-12 * om
            mid = (a + bnd) / 2
            ssum = torch.minimum(torch.maximum(nu + mid * om, lo), hi).sum(1, keepdim=True)
            a = torch.where(ssum < 0, mid, a)
            bnd = torch.where(ssum < 0, bnd, mid)
        nu = torch.minimum(torch.maximum(nu + (a + bnd) / 2 * om, lo), hi)
        nu = nu - om * (nu.sum(1, keepdim=True) / om.sum(1, keepdim=True))  # last ~1e-16 of the sum
    g = Xt @ nu.to(Xt.dtype)  # [B, d, K]
    ratio = (g.double().abs() / pen).amax(1, keepdim=True)  # scale into |x_j^T nu| <= alpha
    theta = 1.0 / ratio.clamp_min(1.0)
    return theta.squeeze(1) * (nu * y).sum(1)


def _admm(
    Xs: torch.Tensor,  # [B, n, d] centred + scaled features (compute dtype), zero rows on padding
    y: torch.Tensor,  # [B, n, 1] float64
    om: torch.Tensor,  # [B, n, 1] w_i / W
    mask: torch.Tensor,  # [B, n, 1] 1 for real rows
    n_real: torch.Tensor,  # [B, 1, 1]
    tau: torch.Tensor,  # [1, 1, K]
    pen: torch.Tensor,  # [B, d, 1] L1 weight of each scaled coefficient
    Ainv: torch.Tensor,  # [B, d, d] (Xs^T Xs + s^2 I)^-1
    s: torch.Tensor,  # [B, 1, 1] pseudo-row scale
    intercept: bool,
    tol: float,
    max_iter: int,
    check_every: int,
    verbose: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    B, n, d = Xs.shape
    K = tau.shape[-1]
    cdt, f64 = Xs.dtype, torch.float64
    # X^T v with X^T as a strided view is a slow path in CPU BLAS for these skinny [d, n] x [n, K]
    # products, so CPU keeps a contiguous copy (with the float32 state: 1.78x per fit in
    # benchmarks/quantile_solver.py vs the parent commit); cuBLAS transposes for free, and GPU
    # memory is the scarcer resource there
    Xt = Xs.transpose(1, 2)
    if Xs.device.type == "cpu":
        Xt = Xt.contiguous()
    # warm start: ridge fit, intercept moved to the tau-quantile of its residuals
    beta = (Ainv @ (Xt @ y.to(cdt))).double().expand(B, d, K).clone()
    r0 = (y - (Xs @ beta[:, :, :1].to(cdt)).double()) * mask
    b = torch.zeros(B, 1, K, dtype=f64, device=Xs.device)
    b_zero = torch.zeros_like(b)  # the intercept-only model: beta = 0, b = the tau-quantile of y
    if intercept:
        for j in range(B):
            nj = int(n_real[j])
            b[j, 0] = torch.quantile(r0[j, :nj, 0], tau[0, 0])
            b_zero[j, 0] = torch.quantile(y[j, :nj, 0], tau[0, 0])

    # Where features outnumber the distinct rows (a few hundred rated items, d = 384..4096) the
    # ridge start interpolates with a large L1 norm, far worse than predicting a constant; start
    # each head from the better of the two, and never return anything worse than that start.
    P_ridge = _primal_objective(Xs, beta, b, y, om, mask, tau, pen)
    P_zero = _primal_objective(Xs, torch.zeros_like(beta), b_zero, y, om, mask, tau, pen)
    use_zero = (P_zero < P_ridge).unsqueeze(1)
    beta = torch.where(use_zero, torch.zeros_like(beta), beta)
    b = torch.where(use_zero, b_zero, b)
    P_start = torch.minimum(P_ridge, P_zero)
    # The iteration runs in the matmul dtype (float32 by default: every [n, K] elementwise pass
    # and dtype conversion costs as much as a matmul at reward-model sizes); the objective and
    # the dual certificate it stops on are evaluated in float64 at each check.
    y64, om64, mask64, tau64, pen64 = y, om, mask, tau, pen
    y, om, mask, tau, pen, s, n_real = (a.to(cdt) for a in (y, om, mask, tau, pen, s, n_real))
    beta, b = beta.to(cdt), b.to(cdt)
    fit = Xs @ beta + b
    zd = (y - fit) * mask
    zp = -s * beta
    ud = torch.zeros_like(zd)
    up = torch.zeros_like(zp)
    rho = 1.0 / (n_real * (zd.abs().sum(1, keepdim=True) / n_real).clamp_min(1e-12))  # [B, 1, K]
    best_P = P_start
    best_D = torch.full((B, K), -float("inf"), dtype=f64, device=Xs.device)
    best_beta, best_b = beta.double(), b.double()
    ar = _OVER_RELAX
    padded = bool((mask == 0).any())  # masks cost memory passes: skip them when no row is padding
    it = 0
    gap = torch.full((B, K), float("inf"), dtype=f64, device=Xs.device)
    lo, hi, thr = om / rho * (tau - 1), om / rho * tau, pen / (s * rho)  # prox bounds: change only with rho
    while it < max_iter:
        it += 1
        check = it % check_every == 0 or it == max_iter
        yz = y - zd
        vd = yz - ud
        if padded:
            vd = vd * mask
        vp = -zp - up
        beta = Ainv @ (Xt @ vd + s * vp)
        if intercept:
            b = vd.sum(1, keepdim=True) / n_real
        Axd = Xs @ beta + b
        if padded:
            Axd = Axd * mask
        Axp = s * beta
        hd = torch.lerp(yz, Axd, ar)  # over-relaxation: ar * Axd + (1 - ar) * (y - zd); zd, y are 0 on padding
        hp = torch.lerp(-zp, Axp, ar)
        zd_old, zp_old = zd, zp
        v = y - hd - ud
        zd = _prox_pinball(v, lo, hi)
        if padded:
            zd = zd * mask
        ud = zd - v  # = ud + hd + zd - y
        if padded:
            ud = ud * mask
        wp = -hp - up
        zp = wp - torch.clamp(wp, -thr, thr)  # soft threshold
        up = zp - wp  # = up + hp + zp
        if not check:
            continue
        # float64 primal objective of this iterate, and a certified lower bound
        beta64, b64 = beta.double(), b.double()
        P = _primal_objective(Xs, beta64, b64, y64, om64, mask64, tau64, pen64)
        better = P < best_P
        best_P = torch.where(better, P, best_P)
        bm = better.unsqueeze(1)
        best_beta = torch.where(bm, beta64, best_beta)
        best_b = torch.where(bm, b64, best_b)
        D = _dual_bound((-rho * ud).double(), om64, tau64, y64, Xt, pen64, intercept)
        best_D = torch.maximum(best_D, D)
        gap = (best_P - best_D) / best_P.abs().clamp_min(1e-300)
        if verbose:
            logger.info(f"  admm it={it:5d} max rel gap={float(gap.max()):.2e} median={float(gap.median()):.2e}")
        if bool((gap <= tol).all()):
            break
        # residual balancing (free: the factorisation does not depend on rho)
        rp = torch.sqrt(((Axd + zd - y) * mask).pow(2).sum(1, keepdim=True) + (Axp + zp).pow(2).sum(1, keepdim=True))
        dz_d, dz_p = (zd - zd_old) * mask, zp - zp_old
        rd = rho * torch.sqrt((Xt @ dz_d).pow(2).sum(1, keepdim=True) + (s * dz_p).pow(2).sum(1, keepdim=True) + dz_d.sum(1, keepdim=True).pow(2))
        sp = torch.sqrt(Axd.pow(2).sum(1, keepdim=True) + Axp.pow(2).sum(1, keepdim=True)).clamp_min(1e-30)
        sd = rho * torch.sqrt((Xt @ ud).pow(2).sum(1, keepdim=True) + (s * up).pow(2).sum(1, keepdim=True)).clamp_min(1e-30)
        ratio = torch.sqrt((rp / sp) / (rd / sd).clamp_min(1e-30))
        fac = torch.where((ratio > 5) | (ratio < 0.2), ratio.clamp(1e-3, 1e3), torch.ones_like(ratio))
        rho = rho * fac
        ud, up = ud / fac, up / fac
        lo, hi, thr = om / rho * (tau - 1), om / rho * tau, pen / (s * rho)
    return best_beta, best_b.squeeze(1), best_P, gap, it
