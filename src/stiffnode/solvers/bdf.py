"""Variable-step, variable-order (1 to 5) BDF and NDF for diffrax.

The method is the quasi-constant step-size BDF in backward-difference form of Shampine &
Reichelt, "The MATLAB ODE suite" (SIAM J. Sci. Comput. 18, 1997), which scipy's `BDF` also
follows: the solution is carried as the backward differences `D` of its interpolating
polynomial on an equally spaced grid of step `h`; a change of `h` re-interpolates `D`, a
change of order reads the error estimates of the neighbouring orders off `D`. With
`ndf=True` the numerical differentiation formulas (Klopfenstein; `kappa` of Shampine &
Reichelt) replace BDF: same cost, a little more accurate at orders 1 to 4.

Newton's method solves each step's implicit equation with the iteration matrix
`I - c J` (`c = h / alpha_k`), with CVODE's reuse policy (Hindmarsh et al., "SUNDIALS",
ACM TOMS 31, 2005; `cvode.c`, `cvode_ls.c`): the Jacobian `J` comes from autodiff
(`jax.jacfwd`) and is kept across steps; it is re-evaluated when Newton fails to converge
with a stale one, and every `jacobian_every` accepted steps. The LU factorisation is redone
when `J` is re-evaluated, when `c` has drifted by more than `max_c_change` since the last
one, and every `factor_every` accepted steps; in between, each Newton correction is scaled
by `2 / (1 + c / c_LU)`. Newton stops when its correction, times the contraction rate
carried over from earlier iterations and steps, is below `kappa` of what the error test
allows (so one iteration often suffices), and fails when a correction is twice the last.
With `linear_solver="gmres"` there is no dense matrix at all: each Newton
correction is a GMRES solve (`solvers.krylov.gmres`, stopped as soon as it converges) with
matrix-vector products `v - c J v` by JVPs at the last linearisation point (Newton-Krylov),
for systems too large for a dense LU; the JVPs are counted (`num_jvp_evals`).

With `SolverStepController` step sizes and orders are the solver's own decisions (the
default of `stiffnode.solve(..., solver="bdf")`); under any other diffrax controller the
controller chooses the step and BDF its order (see `BDF`).
"""

from collections.abc import Callable
from typing import ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from .batching import lazy_cond
from .dense_lu import UNROLLED_MAX_N, LUFactors, factored_solve, lu_factor, lu_solve
from .krylov import gmres
from .self_controlled import AbstractSelfControlledSolver, ControllerTolerances, FlatField
from .step_interpolation import AbstractStepInterpolation
from .unrolled import rows_sum, set_row, small_matmul

MAX_ORDER = 5
NEWTON_MAXITER = 4  # scipy's BDF (CVODE: 3)
RATE_MEMORY = 0.3  # CVODE's CRDOWN: the carried rate decays at most this fast
DIVERGENCE_RATIO = 2.0  # CVODE's RDIV: a correction twice the last one is divergence
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
_K = MAX_ORDER + 1  # rows of D used by the interpolant; D has _K + 2 rows in all

# Klopfenstein-Shampine NDF coefficients (Shampine & Reichelt 1997, table 1, kappa_k).
_NDF_KAPPA = np.array([0.0, -0.1850, -1 / 9, -0.0823, -0.0415, 0.0])


def _coefficients(ndf: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`gamma_k = sum_{j<=k} 1/j`, `alpha_k = (1 - kappa_k) gamma_k` and the error constants
    `kappa_k gamma_k + 1/(k+1)`, for k = 0..MAX_ORDER (error constant up to MAX_ORDER + 1)."""
    kappa = _NDF_KAPPA if ndf else np.zeros(MAX_ORDER + 1)
    gamma = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, MAX_ORDER + 1))])
    alpha = (1 - kappa) * gamma
    error_const = kappa * gamma + 1.0 / np.arange(1, MAX_ORDER + 2)
    error_const = np.append(error_const, np.inf)  # no estimate above MAX_ORDER
    return gamma, alpha, error_const


def _r_matrix(factor):
    """`R_ij = prod_{1<=m<=i} (m - 1 - factor j) / m` for i, j = 0..K-1 (Shampine &
    Reichelt 1997, section 2.2); the product written out row by row."""
    xp = np if isinstance(factor, float) else jnp
    dtype = np.float64 if xp is np else factor.dtype
    m = xp.arange(1, _K, dtype=dtype)[:, None]
    j = xp.arange(1, _K, dtype=dtype)[None, :]
    terms = (m - 1 - factor * j) / m
    rows, acc = [xp.ones(_K, dtype)], xp.ones(_K - 1, dtype)
    for a in range(_K - 1):
        acc = acc * terms[a]
        rows.append(xp.concatenate([xp.zeros(1, dtype), acc]))
    return xp.stack(rows)


_U = _r_matrix(1.0)  # U = R(1)


def _difference_rescaling(order: Int[Array, ""], factor: Float[Array, ""]) -> Array:
    """The `(K, K)` matrix taking the differences `D[:K]` on step `h` to step `factor * h`:
    `R(factor) U` on the leading `order + 1` rows and columns, identity beyond."""
    inside = jnp.arange(_K, dtype=order.dtype) <= order
    mask = inside[:, None] & inside[None, :]
    u = jnp.where(mask, jnp.asarray(_U, factor.dtype), 0.0)
    ru = small_matmul(jnp.where(mask, _r_matrix(factor), 0.0), u)
    return ru + jnp.diag(jnp.where(inside, 0.0, 1.0).astype(ru.dtype))


class _NewtonMatrix(eqx.Module):
    """What the Newton iterations reuse between steps: `J` (dense) or the point where it is
    linearised (matrix-free), and the LU factors of `I - c J` for the `c` they were made with.
    """

    jac: Array  # (n, n) dense, or (0, 0) matrix-free
    lu: LUFactors  # of n x n dense, of 0 x 0 matrix-free
    lu_c: Array  # the c of `lu`; NaN when there is none
    t_lin: Array  # where J was evaluated
    y_lin: Array
    has_jac: Bool[Array, ""]
    steps_since_jac: Int[Array, ""]  # accepted steps since J was evaluated
    steps_since_lu: Int[Array, ""]  # accepted steps since the last factorisation
    rate: Float[Array, ""]  # Newton's contraction rate, carried across steps (1 when fresh)


class BDFState(eqx.Module):
    """The solver state between steps (flat vectors of the state's n components)."""

    D: Float[Array, "K2 n"]  # backward differences on step h, K2 = MAX_ORDER + 3
    h: Float[Array, ""]
    order: Int[Array, ""]
    n_equal_steps: Int[Array, ""]
    newton: _NewtonMatrix


class BDFInterpolation(AbstractStepInterpolation):
    """Dense output on `[t0, t1]`: the step's interpolating polynomial in
    backward-difference form, `y(t) = D_0 + sum_{j=1..k} D_j prod_{m<j} (t - t1 + m h) / ((m+1) h)`.
    """

    t0: Array
    t1: Array
    D: PyTree[Array]  # y's structure, each leaf with a leading axis of K
    h: Array
    order: Array

    def _value(self, t):
        m = jnp.arange(_K - 1, dtype=self.h.dtype)
        x = (t - (self.t1 - m * self.h)) / ((m + 1) * self.h)
        x = jnp.where(m < self.order, x, 0.0)
        weights = [jnp.ones((), x.dtype)]
        for j in range(_K - 1):  # (written out: no dot, so a saving loop stays one function)
            weights.append(weights[-1] * x[j])

        def combine(d):
            w = jnp.stack(weights).astype(d.dtype).reshape((-1,) + (1,) * (d.ndim - 1))
            return rows_sum(w * d)

        return jax.tree.map(combine, self.D)


def _start_differences(fn, t0, y0, h):
    """The differences of an order-1 start on step `h`: `D_0 = y0`, `D_1 = h f(t0, y0)`."""
    D = jnp.zeros((_K + 2, y0.shape[0]), y0.dtype)
    return D.at[0].set(y0).at[1].set(h * fn(t0, y0))


def _dense_jacobian(fn, t, y):
    return jax.jacfwd(lambda z: fn(t, z))(y)


class BDF(AbstractSelfControlledSolver):
    """Variable-order (1 to `max_order`) BDF, or NDF with `ndf=True`, for stiff ODEs.

    Works under any diffrax step-size controller. Best with
    `SolverStepController(rtol, atol)`: BDF then chooses step and
    order together, as scipy's BDF and CVODE do, and the controller counts the work:

        diffrax.diffeqsolve(diffrax.ODETerm(f), BDF(), t0, t1, None, y0,
                            stepsize_controller=SolverStepController(rtol=1e-6, atol=1e-9))

    Under `diffrax.PIDController` the controller picks the step from BDF's error estimate
    and BDF picks its order (among k - 1, k, k + 1, after k + 1 steps at order k); under
    `ConstantStepSize`/`StepTo` the steps are fixed and the order rises from 1 as the
    history allows (give the Newton tolerances as `root_finder=ControllerTolerances(rtol,
    atol, norm)` or `diffrax.VeryChord(rtol=..., atol=...)`; a Newton failure then ends the
    solve). Reverse time, complex states (solved as real and imaginary parts) and pytrees
    are supported.

    A step of order k has the local error estimate `e = C_k (y_{n+1} - y_pred)`; under its
    own controller it is accepted when `||e_i / (atol + rtol |y_{n+1,i}|)||_rms <= 1`.

    Args:
        max_order: highest order used, 1 to 5.
        ndf: use the numerical differentiation formulas instead of BDF.
        linear_solver: `"lu"` (dense Jacobian by jacfwd, LU reused) or `"gmres"`
            (matrix-free Newton-Krylov: GMRES on JVPs).
        gmres_rtol: relative residual tolerance of each GMRES solve (matrix-free only).
        gmres_restart: GMRES restart length (matrix-free only).
        max_c_change: refactorise `I - c J` when `c = h / alpha_k` has changed by more than
            this fraction since the last factorisation (CVODE's 0.3); 0 refactorises at
            every change of step size or order, as scipy's BDF does.
        jacobian_every: re-evaluate J after this many accepted steps with one (CVODE's 51).
        factor_every: refactorise after this many accepted steps (CVODE's 20).
        kappa: Newton's tolerance as a fraction of the error test's allowance (CVODE's
            `nlscoef` is 0.1, diffrax's `VeryChord.kappa` 0.01). Measured at rtol 1e-6 on
            Robertson, HIRES, OREGO, van der Pol (mu 1e3) and POLLU: 0.003 needs at most
            1.6x CVODE's f-evaluations and 1.9x its Jacobians; 0.01 saves another 10% of
            both but its Newton error, biased the same way step after step, adds up (POLLU
            at rtol = atol = 1e-6: 14x the tolerance on the largest species against 0.05x
            with 0.003); 0.1 makes the error estimate noisy enough to reject 5 to 50x more
            steps.
        root_find_max_steps: Newton iterations per step attempt (4, as scipy's BDF).
        root_finder: where the Newton tolerances come from: any object with `rtol`, `atol`
            and `norm`; by default (`ControllerTolerances()`) the adaptive step-size
            controller's. BDF runs its own simplified Newton iteration (at most
            `root_find_max_steps`), converged when `||dy|| min(1, rate) <= kappa / C_k` in
            the tolerance-scaled norm (`C_k` the error constant of order k, so that the
            iteration's error is `kappa` of the error test's allowance), as CVODE's.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., BDFInterpolation]] = BDFInterpolation

    max_order: int = eqx.field(default=MAX_ORDER, static=True)
    ndf: bool = eqx.field(default=False, static=True)
    linear_solver: Literal["lu", "gmres"] = eqx.field(default="lu", static=True)
    gmres_rtol: float = eqx.field(default=1e-3, static=True)
    gmres_restart: int = eqx.field(default=30, static=True)
    max_c_change: float = eqx.field(default=0.3, static=True)
    kappa: float = eqx.field(default=0.003, static=True)
    jacobian_every: int = eqx.field(default=51, static=True)
    factor_every: int = eqx.field(default=20, static=True)
    root_finder: object = ControllerTolerances()
    root_find_max_steps: int = eqx.field(default=NEWTON_MAXITER, static=True)

    def __check_init__(self):
        if not (isinstance(self.max_order, int) and 1 <= self.max_order <= MAX_ORDER):
            raise ValueError(
                f"max_order must be an int from 1 to {MAX_ORDER}, got {self.max_order!r}"
            )
        if self.linear_solver not in ("lu", "gmres"):
            raise ValueError(f"linear_solver must be 'lu' or 'gmres', got {self.linear_solver!r}")

    def order(self, terms):
        return None  # variable: 1 to max_order

    def error_order(self, terms):
        # For controllers other than SolverStepController, which use one exponent for every
        # order k = 1..max_order (local error ~ h^(k+1)): with q = (max_order + 3) / 2 the
        # controller's correction err^(1 - (k+1)/q) contracts at every order
        # (0 < (k+1)/q < 2), never overshooting into rejection cycles.
        return (self.max_order + 3) / 2

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args) -> BDFState:
        field, flat = FlatField.of(terms, t0, t1, y0, args)
        n = flat.shape[0]
        dtype = flat.dtype
        tdtype = jnp.result_type(t0, t1)
        dense = self.linear_solver == "lu"
        size = n if dense else 0
        newton = _NewtonMatrix(
            jac=jnp.zeros((size, size), dtype),
            lu=LUFactors.empty(size, dtype),
            lu_c=jnp.array(jnp.nan, dtype),
            t_lin=jnp.asarray(t0, tdtype),
            y_lin=flat,
            has_jac=jnp.array(False),
            steps_since_jac=jnp.array(0, jnp.int32),
            steps_since_lu=jnp.array(0, jnp.int32),
            rate=jnp.array(1.0, jnp.finfo(dtype).dtype),
        )
        # Order 1 from y0 and f(t0, y0) on the first step's h (a first step of another size,
        # after a rejection, rescales the differences as any step does).
        h = jnp.asarray(t1 - t0, tdtype)
        return BDFState(
            D=_start_differences(field, t0, flat, h.astype(dtype)),
            h=h,
            order=jnp.array(1, jnp.int32),
            n_equal_steps=jnp.array(0, jnp.int32),
            newton=newton,
        )

    def step(self, terms, t0, t1, y0, args, solver_state: BDFState, made_jump):
        fn, flat_y0 = FlatField.of(terms, t0, t1, y0, args)
        dtype = flat_y0.dtype
        tdtype = jnp.result_type(t0, t1)
        rtol, atol, norm = self.tolerances(dtype)

        # The Newton iterations, Jacobians and factorisations run on values without
        # gradients; the solution's gradient comes from the implicit function theorem.
        fn_ng = fn.without_gradients()
        sg = jax.lax.stop_gradient

        gamma, alpha, error_const = (jnp.asarray(c, dtype) for c in _coefficients(self.ndf))
        h = jnp.asarray(t1 - t0, tdtype)
        h_y = h.astype(dtype)
        state = solver_state
        num_f = jnp.array(0, jnp.int32)

        # Restart at order 1 from y0 and f(t0, y0) after a jump in the vector field (the first
        # step's differences are made by `init`: no conditional per step, which under vmap
        # would evaluate f on every step).
        def restarted(_):
            D = _start_differences(fn, t0, flat_y0, h_y)
            return D, jnp.array(1, jnp.int32), jnp.array(0, jnp.int32), jnp.array(1, jnp.int32)

        def rescaled(_):
            factor = sg(h / state.h).astype(dtype)
            ru = _difference_rescaling(state.order, factor)
            D = state.D.at[:_K].set(small_matmul(ru.T, state.D[:_K]))
            # Under its own controller BDF changes order only after order + 1 steps of one
            # size (Shampine & Reichelt); under another controller, which changes h every
            # step, after order + 1 steps at one order.
            changed = jnp.abs(factor - 1) > 1e-10
            reset = changed if self.follows_own_steps else jnp.array(False)
            n_equal = jnp.where(reset, 0, state.n_equal_steps)
            return D, state.order, n_equal, jnp.array(0, jnp.int32)

        if made_jump is False:
            D, order, n_equal_steps, f_restart = rescaled(None)
        else:
            D, order, n_equal_steps, f_restart = jax.lax.cond(made_jump, restarted, rescaled, None)
        num_f = num_f + f_restart

        rows = jnp.arange(_K + 2, dtype=jnp.int32)
        y_predict = rows_sum(jnp.where((rows <= order)[:, None], D, 0.0))
        scale = atol + rtol * jnp.abs(y_predict)
        lower = jnp.where((rows[1:_K] <= order)[:, None], D[1:_K], 0.0)
        psi = rows_sum(lower * gamma[1:_K, None]) / alpha[order]
        c = h_y / alpha[order]
        newton_tol = self.kappa / error_const[order]

        newton_args = (fn_ng, sg(t1), sg(y_predict), sg(c), sg(psi), sg(scale), newton_tol, norm)
        matrix = state.newton
        first_new_jac = ~matrix.has_jac | (matrix.steps_since_jac >= self.jacobian_every)
        first_force = matrix.steps_since_lu >= self.factor_every
        zero = jnp.array(0, jnp.int32)

        # At most two attempts, in a loop (one copy of the refresh and the Newton iteration
        # in the program): the first with the Jacobian and factors as they are (refreshed
        # when stale); if Newton fails with a Jacobian or factors from an earlier step, a
        # second after a refresh. As CVODE does: if c drifted by more than 20% since the
        # factorisation, blame the factors and refactorise only; otherwise re-evaluate J too.
        # Under vmap the second runs only when some lane retries (a batched while loop).
        def attempt(carry):
            k, matrix, _, _, _, _, retry, blame_jac, counts = carry
            first = k == 0
            matrix, nj, nlu = self._refresh(
                *newton_args[:4],
                matrix,
                jnp.where(first, first_new_jac, blame_jac & retry),
                force_factor=jnp.where(first, first_force, retry),
            )
            matrix = eqx.tree_at(
                lambda m: m.rate, matrix, jnp.where(first, matrix.rate, jnp.ones_like(matrix.rate))
            )
            d, n_iter, converged, jvps, nonfinite, rate = self._newton(*newton_args, matrix)
            matrix = eqx.tree_at(lambda m: m.rate, matrix, rate)
            retry = first & ~converged & ~((nj > 0) & (matrix.lu_c == c))
            blame_jac = (nj == 0) & (jnp.abs(c / matrix.lu_c - 1) <= 0.2)
            counts = jax.tree.map(jnp.add, counts, (nj, nlu, n_iter, jvps))
            return k + 1, matrix, d, n_iter, converged, nonfinite, retry, blame_jac, counts

        def again(carry):
            k, retry = carry[0], carry[6]
            return (k == 0) | retry

        no = jnp.array(False)
        init = (zero, matrix, jnp.zeros_like(y_predict), zero, no, no, no, no, (zero,) * 4)
        attempts, matrix, d, n_iter, converged, nonfinite, _, _, counts = jax.lax.while_loop(
            again, attempt, init
        )
        num_jac, num_lu, num_iters, num_jvp = counts
        num_f = num_f + num_iters
        if self.linear_solver == "gmres":  # each Newton solve linearises f: one evaluation
            num_f = num_f + attempts
        d = self._implicit_gradient(fn, t1, y_predict, c, psi, d)

        y_new = y_predict + d
        scale_new = atol + rtol * jnp.abs(y_new)
        newton_max = self.root_find_max_steps
        safety = 0.9 * (2 * newton_max + 1) / (2 * newton_max + n_iter).astype(dtype)
        error = error_const[order] * d
        error_norm = norm(error / scale_new)
        error_ok = converged & (error_norm <= 1)

        # Differences of the accepted step: D_{order+2} = d - D_{order+1}, D_{order+1} = d,
        # D_i += D_{i+1} for i = order..0 (each D_i with i <= order gains d + sum_{j>i} D_j).
        inside = (rows <= order)[:, None]
        # (sum_{j>=i} D_j for i <= order, by rows: a reverse cumsum is a reduce-window; the
        # row operations are written out throughout, see `unrolled`)
        kept = jnp.where(inside, D, 0.0)
        sums = [kept[-1]]
        for i in range(_K, -1, -1):
            sums.append(sums[-1] + kept[i])
        tail = jnp.stack(sums[::-1])
        D_new = jnp.where(inside, tail + d[None], D)
        D_new = set_row(set_row(D_new, order + 1, d), order + 2, d - D[order + 1])
        n_equal_new = n_equal_steps + 1

        # Order and step: after order + 1 steps (see `rescaled`), choose among k-1, k, k+1.
        def norm_or_inf(k, row):
            est = norm(error_const[k] * D_new[row] / scale_new)
            return jnp.where((k >= 1) & (k <= self.max_order), est, jnp.inf)

        error_m = norm_or_inf(order - 1, order)
        error_p = norm_or_inf(order + 1, order + 2)
        norms = jnp.stack([error_m, error_norm, error_p])
        exponents = -1.0 / (order + jnp.arange(3, dtype=jnp.int32)).astype(dtype)
        factors = norms**exponents  # inf for a zero estimate, 0 for a missing one
        best = jnp.argmax(factors).astype(jnp.int32)
        change = n_equal_new >= order + 1
        order_new = jnp.where(change, order + best - 1, order)
        n_equal_new = jnp.where(order_new != order, 0, n_equal_new)
        accept_factor = jnp.where(change, jnp.minimum(MAX_FACTOR, safety * factors[best]), 1.0)

        reject_factor = jnp.where(
            converged,
            jnp.maximum(MIN_FACTOR, safety * error_norm ** (-1.0 / (order + 1).astype(dtype))),
            0.5,
        )
        reject_factor = jnp.where(jnp.isfinite(reject_factor), reject_factor, MIN_FACTOR)
        factor = jnp.where(error_ok, accept_factor, reject_factor)

        # (A rejected step's state is discarded by diffrax: the counters count accepted steps.)
        matrix = eqx.tree_at(
            lambda m: (m.steps_since_jac, m.steps_since_lu),
            matrix,
            (matrix.steps_since_jac + 1, matrix.steps_since_lu + 1),
        )
        new_state = BDFState(
            D=D_new,
            h=h,
            order=order_new.astype(jnp.int32),
            n_equal_steps=n_equal_new.astype(jnp.int32),
            newton=matrix,
        )
        y_error = self.error_output(
            fn.to_tree(error),
            failed=~converged,
            accepted=error_ok,
            next_dt=h * factor.astype(tdtype),
            order=order,
            counts=(num_f, num_jac, num_jvp, num_lu, num_iters, ~converged, ~error_ok),
            tdtype=tdtype,
            setup_vf_evals=1,  # f(t0, y0) in `init`
        )
        dense_info = dict(
            D=jax.vmap(fn.to_tree)(D_new[:_K]),
            h=h,
            order=order.astype(tdtype),  # float: diffrax pre-fills dense buffers with inf
        )
        # A vector field that returned NaN or inf leaves a NaN candidate (seen by
        # `solve`'s diagnosis); its gradient is that of the finite iterate.
        y1 = fn.to_tree(y_new + sg(jnp.where(nonfinite, jnp.nan, 0.0)).astype(dtype))
        # Under fixed steps a Newton failure ends the solve; an adaptive controller rejects
        # the step (its error estimate is inf) and retries.
        result = diffrax.RESULTS.where(
            converged, diffrax.RESULTS.successful, diffrax.RESULTS.nonlinear_divergence
        )
        return y1, y_error, dense_info, new_state, result

    # -- linear algebra --------------------------------------------------------------------

    def _refresh(self, fn, t, y, c, matrix: _NewtonMatrix, new_jac, force_factor=False):
        """Re-evaluate J at (t, y) if `new_jac`; refactorise if J changed, `c` drifted past
        `max_c_change`, or `force_factor`.

        Returns the matrix and the counts (Jacobian evaluations, LU factorisations).
        """
        if self.linear_solver == "gmres":
            t_lin = jnp.where(new_jac, jnp.asarray(t, matrix.t_lin.dtype), matrix.t_lin)
            y_lin = jnp.where(new_jac, jax.lax.stop_gradient(y), matrix.y_lin)
            zero = jnp.zeros_like(matrix.steps_since_jac)
            matrix = eqx.tree_at(
                lambda m: (m.t_lin, m.y_lin, m.has_jac, m.lu_c, m.steps_since_jac, m.rate),
                matrix,
                (
                    t_lin,
                    y_lin,
                    matrix.has_jac | new_jac,
                    c.astype(matrix.lu_c.dtype),
                    jnp.where(new_jac, zero, matrix.steps_since_jac),
                    jnp.where(new_jac, jnp.ones_like(matrix.rate), matrix.rate),
                ),
            )
            return matrix, new_jac.astype(jnp.int32), jnp.array(0, jnp.int32)

        # Under vmap, a Jacobian and an LU only when some lane needs them (`lazy_cond`).
        jac = lazy_cond(
            new_jac,
            lambda fn, t, y, jac: jax.lax.stop_gradient(_dense_jacobian(fn, t, y)),
            lambda fn, t, y, jac: jac,
            fn,
            t,
            y,
            matrix.jac,
        )
        c_key = c.astype(matrix.lu_c.dtype)
        drift = jnp.abs(c_key / matrix.lu_c - 1)
        # (NaN lu_c: no factors yet.)
        factorise = new_jac | force_factor | ~(drift <= self.max_c_change)

        def factor(jac, c, lu):
            eye = jnp.eye(jac.shape[0], dtype=jac.dtype)
            return lu_factor(eye - jax.lax.stop_gradient(c) * jac)

        # Above the unrolled size LAPACK factorises one matrix after another under vmap:
        # only the lanes that need new factors pay (a 64-member POLLU ensemble: 25% faster).
        lu = lazy_cond(
            factorise, factor, lambda jac, c, lu: lu, jac, c, matrix.lu,
            per_lane=jac.shape[0] > UNROLLED_MAX_N,
        )  # fmt: skip
        zero = jnp.zeros_like(matrix.steps_since_jac)
        matrix = _NewtonMatrix(
            jac=jac,
            lu=lu,
            lu_c=jnp.where(factorise, c_key, matrix.lu_c),
            t_lin=matrix.t_lin,
            y_lin=matrix.y_lin,
            has_jac=matrix.has_jac | new_jac,
            steps_since_jac=jnp.where(new_jac, zero, matrix.steps_since_jac),
            steps_since_lu=jnp.where(factorise, zero, matrix.steps_since_lu),
            # New factors: the contraction rate is unknown again (CVODE's crate = 1).
            rate=jnp.where(factorise, jnp.ones_like(matrix.rate), matrix.rate),
        )
        return matrix, new_jac.astype(jnp.int32), factorise.astype(jnp.int32)

    def _linear_solve(self, fn, c, matrix: _NewtonMatrix) -> Callable[[Array], tuple]:
        """`r -> ((I - c J)^{-1} r, JVPs used)` with the reused factors, or by GMRES on JVPs."""
        if self.linear_solver == "lu":
            factors = jax.lax.stop_gradient(matrix.lu)
            # Factors made for c_LU != c: scale the correction (CVODE's 2 / (1 + gamrat)).
            scale = 2 / (1 + c / matrix.lu_c.astype(c.dtype))
            return lambda r: (scale * lu_solve(factors, r), jnp.array(0, jnp.int32))
        _, jvp = jax.linearize(lambda z: fn(matrix.t_lin, z), matrix.y_lin)
        c = jax.lax.stop_gradient(c)

        def solve(r):
            sol = gmres(
                lambda v: v - c * jvp(v), r, rtol=self.gmres_rtol, restart=self.gmres_restart
            )
            return sol.x, sol.num_matvecs

        return solve

    def _newton(self, fn, t, y_predict, c, psi, scale, tol, norm, matrix):
        """Solve `d = c f(t, y_predict + d) - psi` by simplified Newton with the iteration
        matrix `I - c J`, as CVODE's `cvNlsConvTest`: at most `root_find_max_steps`
        iterations; converged when `||dy|| min(1, rate) <= tol`, with the contraction rate
        `rate = max(0.3 rate_old, ||dy|| / ||dy_old||)` carried across steps; diverging when
        `||dy|| > 2 ||dy_old||`. Returns `(d, iterations, converged, JVPs used, whether the
        vector field returned NaN or inf, the contraction rate)`.
        """
        solve_linear = self._linear_solve(fn, c, matrix)

        def body(carry):
            k, d, norm_old, rate, _, _, jvps, _ = carry
            r = c * fn(t, y_predict + d) - psi - d
            finite = jnp.all(jnp.isfinite(r))
            dy, used = solve_linear(r)
            dy_norm = norm(dy / scale)
            first = k == 0
            rate = jnp.where(first, rate, jnp.maximum(RATE_MEMORY * rate, dy_norm / norm_old))
            diverging = ~first & (dy_norm > DIVERGENCE_RATIO * norm_old)
            bad = ~finite | diverging | ~jnp.isfinite(dy_norm)
            d = jnp.where(bad, d, d + dy)
            done = ~bad & (dy_norm * jnp.minimum(1.0, rate) <= tol)
            return k + 1, d, dy_norm, rate, done, bad, jvps + used, ~finite

        def cond(carry):
            k, _, _, _, converged, failed, _, _ = carry
            return (k < self.root_find_max_steps) & ~converged & ~failed

        init = (
            jnp.array(0, jnp.int32),
            jnp.zeros_like(y_predict),
            jnp.array(jnp.inf, y_predict.dtype),
            matrix.rate.astype(y_predict.dtype),
            jnp.array(False),
            jnp.array(False),
            jnp.array(0, jnp.int32),
            jnp.array(False),
        )
        k, d, _, rate, converged, _, jvps, nonfinite = jax.lax.while_loop(cond, body, init)
        return d, k, converged, jvps, nonfinite, rate.astype(matrix.rate.dtype)

    def _implicit_gradient(self, fn, t, y_predict, c, psi, d):
        """`d` unchanged, with the gradient of the exact root of
        `G(d) = c f(t, y_predict + d) - psi - d = 0` (implicit function theorem:
        `dd = -(dG/dd)^{-1} dG`), so that backprop never enters the Newton loop."""

        def residual(x):
            return c * fn(t, y_predict + x) - psi - x

        def tangent_solve(g, b):
            # `g` is linear: dG/dd. Both solves are transposable (reverse mode).
            if self.linear_solver == "lu":
                # (unrolled up to UNROLLED_MAX_N states: no LAPACK call per backward step)
                a = jax.jacfwd(g)(jnp.zeros_like(b))
                return factored_solve(a, lu_factor(jax.lax.stop_gradient(a)), b)

            def krylov(matvec, rhs):
                return gmres(matvec, rhs, rtol=1e-10, atol=1e-14, restart=self.gmres_restart).x

            return jax.lax.custom_linear_solve(g, b, krylov, transpose_solve=krylov)

        return jax.lax.custom_root(
            residual, jax.lax.stop_gradient(d), lambda _, guess: guess, tangent_solve
        )
