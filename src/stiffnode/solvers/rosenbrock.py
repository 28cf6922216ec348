"""Rosenbrock (linearly implicit) methods for stiff ODEs: no Newton iteration.

An s-stage Rosenbrock method solves s linear systems with one matrix per step
(Hairer & Wanner, "Solving ODEs II", IV.7, in the form without products by `J`):

    (I / (h gamma) - J) K_i = f(t0 + alpha_i h, y0 + sum_{j<i} a_ij K_j)
                              + sum_{j<i} (c_ij / h) K_j + gamma_i h df/dt(t0, y0),
    y1 = y0 + sum_i m_i K_i,        error estimate  sum_i e_i K_i,

with `J = df/dy(t0, y0)` exact (a Rosenbrock method's order needs the exact Jacobian). The
matrix is either formed (`jax.jacfwd`) and LU-factorised once per step, or never formed:
each stage is a GMRES solve (`solvers.krylov.gmres`, stopped at `min(gmres_rtol, rtol)`) on
Jacobian-vector products at `(t0, y0)`. A gradient flow's `J` is minus the Hessian, so the
latter costs Hessian-vector products only. The solves are `jax.lax.custom_linear_solve`s,
so reverse-mode gradients through a solve work on both paths.

An ordinary diffrax adaptive solver: its embedded error estimate drives any controller
(`diffrax.PIDController`, or `SolverStepController`, which applies the same rule as a PI
controller without memory: a step is accepted when
`||err_i / (atol + rtol max(|y0_i|, |y1_i|))||_rms <= 1`, the next step is
`h * clip(0.9 err^(-1/3), 0.2, 6)`, at most `h` after a rejection, and the work is
counted). `f(t1, y1)` is carried to the next step as its first stage (first same as
last), and with `f(t0, y0)` gives the cubic Hermite dense output, of the method's order 3.

A stability guard: the stability function `R(z)` of a Rosenbrock method has its pole at
`z = 1 / gamma`. Where `h J` has a real eigenvalue beyond it (a growing mode, e.g. near a
blow-up of `y' = y^2`), the step has no relation to the solution, while the error estimate
can be tiny. Such a step is rejected: with dense linear algebra this is seen as a
non-positive `det(I - h gamma J)` (positive for small `h`; it changes sign as an eigenvalue
of `h gamma J` crosses 1), read off the LU factors.
"""

import abc
from collections.abc import Callable
from typing import ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .dense_lu import determinant_is_positive, factored_solve, lu_factor
from .krylov import gmres
from .self_controlled import AbstractSelfControlledSolver, ControllerTolerances, FlatField
from .step_interpolation import AbstractStepInterpolation

MIN_FACTOR = 0.2
MAX_FACTOR = 6.0
SAFETY = 0.9


class RosenbrockTableau(eqx.Module):
    """Coefficients of the form above: `a`, `c` strictly lower triangular (s x s);
    `new_f[i]` False when stage i reuses stage i-1's evaluation (its `a` row is equal)."""

    gamma: float
    a: np.ndarray
    c: np.ndarray
    m: np.ndarray
    e: np.ndarray
    alpha: np.ndarray
    gammas: np.ndarray  # gamma_i = sum_j gamma_ij, the df/dt weights
    new_f: tuple[bool, ...]
    order: int
    error_order: int  # of the error estimate: min(order, embedded order) + 1


# Sandu et al., "Benchmarking stiff ODE solvers for atmospheric chemistry problems II:
# Rosenbrock solvers", Atmos. Environ. 31 (1997): 4 stages (3 evaluations of f), order 3,
# embedded order 2, stiffly accurate and L-stable.
RODAS3 = RosenbrockTableau(
    gamma=0.5,
    a=np.array([[0, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 0], [2, 0, 1, 0]], float),
    c=np.array([[0, 0, 0, 0], [4, 0, 0, 0], [1, -1, 0, 0], [1, -1, -8 / 3, 0]], float),
    m=np.array([2, 0, 1, 1], float),
    e=np.array([0, 0, 0, 1], float),
    alpha=np.array([0, 0, 1, 1], float),
    gammas=np.array([0.5, 1.5, 0, 0], float),
    new_f=(True, False, True, True),
    order=3,
    error_order=3,
)

# Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical benchmarks
# within the Julia Differential Equations package", BIT Numer. Math. 63 (2023): 8 stages
# (8 evaluations of f), order 5, embedded order 4, stiffly accurate; in the form above
# (Hairer & Wanner's, as OrdinaryDiffEq.jl's `Rodas5PTableau` also stores it). Stages 7
# and 8 start from the previous stage's solution (a_7 = a_6 + e_6, a_8 = a_7 + e_7),
# y1 = stage 8's solution + K_8, and K_8 is the error estimate.
_RODAS5P_A6 = [
    -7.502846399306121,
    2.561846144803919,
    -11.627539656261098,
    -0.18268767659942256,
    0.030198172008377946,
]
RODAS5P = RosenbrockTableau(
    gamma=0.21193756319429014,
    a=np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [3.0, 0, 0, 0, 0, 0, 0, 0],
            [2.849394379747939, 0.45842242204463923, 0, 0, 0, 0, 0, 0],
            [-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0, 0, 0, 0],
            [
                2.8029986275628964,
                0.5072464736228206,
                -0.3988312541770524,
                -0.04721187230404641,
                0,
                0,
                0,
                0,
            ],
            [*_RODAS5P_A6, 0, 0, 0],
            [*_RODAS5P_A6, 1, 0, 0],
            [*_RODAS5P_A6, 1, 1, 0],
        ]
    ),
    c=np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [-14.155112264123755, 0, 0, 0, 0, 0, 0, 0],
            [-17.97296035885952, -2.859693295451294, 0, 0, 0, 0, 0, 0],
            [147.12150275711716, -1.41221402718213, 71.68940251302358, 0, 0, 0, 0, 0],
            [
                165.43517024871676,
                -0.4592823456491126,
                42.90938336958603,
                -5.961986721573306,
                0,
                0,
                0,
                0,
            ],
            [
                24.854864614690072,
                -3.0009227002832186,
                47.4931110020768,
                5.5814197821558125,
                -0.6610691825249471,
                0,
                0,
                0,
            ],
            [
                30.91273214028599,
                -3.1208243349937974,
                77.79954646070892,
                34.28646028294783,
                -19.097331116725623,
                -28.087943162872662,
                0,
                0,
            ],
            [
                37.80277123390563,
                -3.2571969029072276,
                112.26918849496327,
                66.9347231244047,
                -40.06618937091002,
                -54.66780262877968,
                -9.48861652309627,
                0,
            ],
        ]
    ),
    m=np.array([*_RODAS5P_A6, 1, 1, 1]),
    e=np.array([0, 0, 0, 0, 0, 0, 0, 1], float),
    alpha=np.array(
        [0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664]
        + [1, 1, 1]
    ),
    gammas=np.array(
        [
            0.21193756319429014,
            -0.42387512638858027,
            -0.3384627126235924,
            1.8046452872882734,
            2.325825639765069,
            0,
            0,
            0,
        ]
    ),
    new_f=(True,) * 8,
    order=5,
    error_order=5,
)

# Rodas5P's dense output of order 4 (Steinebach 2023): with the stages' K and
# `d_r = sum_i H[r, i] K_i`, `y(t0 + s h) = (1 - s) y0 + s (y1 + (1 - s) (d_0 + s (d_1 +
# s d_2)))`.
RODAS5P_DENSE = np.array(
    [
        [
            25.948786856663858,
            -2.5579724845846235,
            10.433815404888879,
            -2.3679251022685204,
            0.524948541321073,
            1.1241088310450404,
            0.4272876194431874,
            -0.17202221070155493,
        ],
        [
            -9.91568850695171,
            -0.9689944594115154,
            3.0438037242978453,
            -24.495224566215796,
            20.176138334709044,
            15.98066361424651,
            -6.789040303419874,
            -6.710236069923372,
        ],
        [
            11.419903575922262,
            2.8879645146136994,
            72.92137995996029,
            80.12511834622643,
            -52.072871366152654,
            -59.78993625266729,
            -0.15582684282751913,
            4.883087185713722,
        ],
    ]
)


class RodasInterpolation(AbstractStepInterpolation):
    """`y(t0 + s h) = (1 - s) y0 + s (y1 + (1 - s) (d_0 + s (d_1 + s d_2)))` on `[t0, t1]`
    (the dense output of the Rodas family; `d` has a leading axis of 3)."""

    t0: Array
    t1: Array
    y0: PyTree[Array]
    y1: PyTree[Array]
    d: PyTree[Array]

    def _value(self, t):
        s = (t - self.t0) / (self.t1 - self.t0)

        def one(y0, y1, d):
            s_ = s.astype(y0.dtype)
            return (1 - s_) * y0 + s_ * (y1 + (1 - s_) * (d[0] + s_ * (d[1] + s_ * d[2])))

        return jax.tree.map(one, self.y0, self.y1, self.d)


class RosenbrockState(eqx.Module):
    """`f(t0, y0)` (flat, real), carried from the last step's `f(t1, y1)`; zeros with
    `linear_solver="gmres"`, whose linearisation at `(t0, y0)` evaluates `f(t0, y0)`
    anyway."""

    f0: Array


class AbstractRosenbrock(AbstractSelfControlledSolver):
    """A Rosenbrock method (module docstring) with a dense output: the step (Jacobian, LU or
    GMRES, error control, stability guard) around a method's stages (`_stages`).

    Works under any diffrax step-size controller; `SolverStepController(rtol, atol)` also
    counts its work. Under fixed steps no tolerances are needed with `linear_solver="lu"`.

    Args:
        linear_solver: `"lu"` (dense Jacobian by jacfwd, one LU per step) or `"gmres"`
            (matrix-free: GMRES on Jacobian-vector products; each counted in
            `num_jvp_evals`).
        gmres_rtol: relative residual tolerance of each stage's GMRES solve; the solves use
            `min(gmres_rtol, rtol)`. Unlike in a Newton iteration, a stage's solve error is
            not corrected later: it enters `y1` and the error estimate directly.
        gmres_restart: GMRES restart length.
        autonomous: `f` does not depend on `t`: the `df/dt` term (one more JVP per step)
            is skipped. With `False` it is computed by forward-mode autodiff in `t`.
        root_finder: where the tolerances come from (as for `BDF`): by default the adaptive
            step-size controller; under fixed steps any object with `rtol`, `atol`, `norm`.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: eqx.AbstractClassVar[Callable[..., diffrax.AbstractLocalInterpolation]]

    linear_solver: Literal["lu", "gmres"] = eqx.field(default="lu", static=True)
    gmres_rtol: float = eqx.field(default=1e-6, static=True)
    gmres_restart: int = eqx.field(default=30, static=True)
    autonomous: bool = eqx.field(default=False, static=True)
    root_finder: object = ControllerTolerances()
    root_find_max_steps: int = eqx.field(default=0, static=True)  # no Newton iteration

    def __check_init__(self):
        if self.linear_solver not in ("lu", "gmres"):
            raise ValueError(f"linear_solver must be 'lu' or 'gmres', got {self.linear_solver!r}")
        if not (isinstance(self.gmres_rtol, float | int) and 0 < self.gmres_rtol < 1):
            raise ValueError(f"gmres_rtol must be in (0, 1), got {self.gmres_rtol!r}")

    @abc.abstractmethod
    def order(self, terms) -> int:
        """The method's order."""

    @abc.abstractmethod
    def error_order(self, terms) -> int:
        """The order of the error estimate: `min(order, embedded order) + 1`."""

    @abc.abstractmethod
    def _gamma(self) -> float:
        """`gamma` of the stage systems `(I - h gamma J) K = h gamma r`."""

    @abc.abstractmethod
    def _stages(self, fn, t0, t1, flat_y0, f0, f_t, h, solve):
        """`(y1, error estimate, f(t1, y1), stages K, JVPs used)`; `solve(r)` is
        `((I - h gamma J)^{-1} (h gamma r), JVPs used)`, `f_t` is `df/dt(t0, y0)`."""

    @abc.abstractmethod
    def _evals_per_attempt(self) -> int:
        """Evaluations of f per step attempt, `f(t1, y1)` (the next step's first) included."""

    @abc.abstractmethod
    def _num_stages(self) -> int:
        """The stages `_stages` returns."""

    @abc.abstractmethod
    def _dense_info(self, fn, y0, y1, h, f0, f1, ks) -> dict:
        """What `interpolation_cls` is built from (besides t0, t1), in solver time."""

    def dense_info_shape(self, terms, t0, t1, y0, args) -> dict:
        """The shapes and dtypes of `step`'s dense information, without tracing a step (for
        a caller that needs them before stepping, as `AutoSwitch` does)."""

        def dense():
            fn, flat = FlatField.of(terms, t0, t1, y0, args)
            z = jnp.zeros_like(flat)
            h = jnp.asarray(t1 - t0, jnp.result_type(t0, t1)).astype(flat.dtype)
            return self._dense_info(fn, y0, y0, h, z, z, [z] * self._num_stages())

        return jax.eval_shape(dense)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args) -> RosenbrockState:
        fn, flat_y0 = FlatField.of(terms, t0, t1, y0, args)
        if self.linear_solver == "gmres":
            return RosenbrockState(jnp.zeros_like(flat_y0))
        return RosenbrockState(fn(t0, flat_y0))

    def _needs_tolerances(self) -> bool:
        return self.reports or self.linear_solver == "gmres"

    def step(self, terms, t0, t1, y0, args, solver_state: RosenbrockState, made_jump):
        fn, flat_y0 = FlatField.of(terms, t0, t1, y0, args)
        dtype = flat_y0.dtype
        tdtype = jnp.result_type(t0, t1)
        rtol, atol, norm = (
            self.tolerances(dtype) if self._needs_tolerances() else (None, None, None)
        )
        h = jnp.asarray(t1 - t0, tdtype).astype(dtype)

        # First same as last: f(t0, y0) is the previous step's f(t1, y1), except after a
        # jump in the vector field, and on the matrix-free path (from the linearisation).
        if self.linear_solver == "gmres":
            f0, jvp = jax.linearize(lambda y: fn(t0, y), flat_y0)
            fresh = 1
        elif made_jump is False:
            f0, fresh = solver_state.f0, 0
        else:
            f0 = jax.lax.cond(made_jump, lambda: fn(t0, flat_y0), lambda: solver_state.f0)
            fresh = jnp.asarray(made_jump).astype(jnp.int32)
        num_jvp = jnp.array(0, jnp.int32)
        if self.autonomous:
            f_t = jnp.zeros_like(flat_y0)
        else:
            t0_ = jnp.asarray(t0, tdtype)
            f_t = jax.jvp(lambda t: fn(t, flat_y0), (t0_,), (jnp.ones_like(t0_),))[1]
            num_jvp = num_jvp + 1
        c = h * float(self._gamma())  # the systems are (I - c J) K = c rhs
        stable = jnp.array(True)
        if self.linear_solver == "lu":
            jac = jax.jacfwd(lambda y: fn(t0, y))(flat_y0)
            matrix = jnp.eye(jac.shape[0], dtype=dtype) - c * jac
            factors = lu_factor(jax.lax.stop_gradient(matrix))
            stable = determinant_is_positive(factors)

            def solve(rhs):  # (differentiated as a linear solve, not through the LU)
                return factored_solve(matrix, factors, c * rhs), jnp.array(0, jnp.int32)

        else:

            def matvec(v):
                return v - c * jvp(v)

            # A stage's solve error goes straight into y1 and the error estimate: no looser
            # than the step's own relative tolerance.
            solve_rtol = jnp.minimum(jnp.asarray(self.gmres_rtol, dtype), rtol)

            def krylov(mv, b):
                sol = gmres(mv, b, rtol=solve_rtol, restart=self.gmres_restart)
                return sol.x, sol.num_matvecs

            def solve(rhs):
                return jax.lax.custom_linear_solve(
                    matvec, c * rhs, krylov, transpose_solve=krylov, has_aux=True
                )

        y_new, err, f1, ks, used = self._stages(fn, t0, t1, flat_y0, f0, f_t, h, solve)
        num_jvp = num_jvp + used
        failed = ~stable | ~jnp.all(jnp.isfinite(y_new))
        if self.reports:
            scale = atol + rtol * jnp.maximum(jnp.abs(flat_y0), jnp.abs(y_new))
            error_norm = jax.lax.stop_gradient(norm(err / scale))
            finite = jnp.isfinite(error_norm) & ~failed
            accepted = finite & (error_norm <= 1)
            factor = SAFETY * error_norm ** (-1.0 / self.error_order(terms))
            factor = jnp.where(finite, factor, MIN_FACTOR)
            factor = jnp.clip(factor, MIN_FACTOR, jnp.where(accepted, MAX_FACTOR, 1.0))
        else:
            accepted = factor = jnp.array(0.0, dtype)
        lu = int(self.linear_solver == "lu")
        y_error = self.error_output(
            fn.to_tree(err),
            failed=failed,
            accepted=accepted,
            next_dt=jnp.asarray(t1 - t0, tdtype) * factor.astype(tdtype),
            order=self.order(terms),
            counts=(fresh + self._evals_per_attempt(), lu, num_jvp, lu, 0, 0, 0),
            tdtype=tdtype,
            setup_vf_evals=int(self.linear_solver == "lu"),
        )
        y1 = fn.to_tree(y_new)
        dense_info = self._dense_info(fn, y0, y1, h, f0, f1, ks)
        new_state = RosenbrockState(f1)
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful


class AbstractRodas(AbstractRosenbrock):
    """A Rosenbrock method given by its `tableau` (the module docstring's form)."""

    tableau: eqx.AbstractClassVar[RosenbrockTableau]

    def order(self, terms) -> int:
        return self.tableau.order

    def error_order(self, terms) -> int:
        return self.tableau.error_order

    def _gamma(self) -> float:
        return self.tableau.gamma

    def _stages(self, fn, t0, t1, flat_y0, f0, f_t, h, solve):
        tab = self.tableau
        ks = []
        f_i = f0
        num_jvp = jnp.array(0, jnp.int32)
        # (c_ij / h as c_ij * (1 / h): one division, the products fused into the stages; a
        # division per coefficient is a kernel and a constant buffer of its own each, 28 for
        # Rodas5P, which XLA:CPU sets up on every call of the program, step or not)
        # (h = 0 in the masked steps of vmapped members that are done: 1 / 0 there would
        # make their cotangents NaN through the mask's `where`)
        inv_h = 1 / jnp.where(h == 0, 1, h)
        for i in range(len(tab.m)):
            if i > 0 and tab.new_f[i]:
                y_i = flat_y0 + sum(float(tab.a[i, j]) * ks[j] for j in range(i) if tab.a[i, j])
                f_i = fn(t0 + float(tab.alpha[i]) * (t1 - t0), y_i)
            rhs = f_i + sum((float(tab.c[i, j]) * inv_h) * ks[j] for j in range(i) if tab.c[i, j])
            if tab.gammas[i] and not self.autonomous:
                rhs = rhs + (float(tab.gammas[i]) * h) * f_t
            k_i, used = solve(rhs)
            ks.append(k_i)
            num_jvp = num_jvp + used
        y_new = flat_y0 + sum(float(tab.m[i]) * ks[i] for i in range(len(ks)) if tab.m[i])
        err = sum(float(tab.e[i]) * ks[i] for i in range(len(ks)) if tab.e[i])
        return y_new, err, fn(t1, y_new), ks, num_jvp

    def _evals_per_attempt(self) -> int:
        # the stages not sharing an earlier one's evaluation, and f(t1, y1)
        return sum(self.tableau.new_f[1:]) + 1

    def _num_stages(self) -> int:
        return len(self.tableau.new_f)


class Rodas3(AbstractRodas):
    """Rodas3, a stiffly accurate, L-stable Rosenbrock method of order 3 with embedded
    order 2 (Sandu et al. 1997), and a cubic Hermite dense output of order 3 from `f` at
    both ends. Arguments as `AbstractRosenbrock`'s."""

    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )
    tableau: ClassVar[RosenbrockTableau] = RODAS3

    def _dense_info(self, fn, y0, y1, h, f0, f1, ks):
        # The Hermite data: k = h dy/ds at both ends.
        k = jax.tree.map(lambda a, b: jnp.stack([a, b]), fn.to_tree(h * f0), fn.to_tree(h * f1))
        return dict(y0=y0, y1=y1, k=k)


class Rodas5P(AbstractRodas):
    """Rodas5P (Steinebach 2023), a stiffly accurate Rosenbrock method of order 5 with
    embedded order 4 and a dense output of order 4: 8 stages, one LU per step; the
    workhorse of Julia's stiff defaults, for tight tolerances on small stiff systems.
    Arguments as `AbstractRosenbrock`'s."""

    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        RodasInterpolation
    )
    tableau: ClassVar[RosenbrockTableau] = RODAS5P

    def _dense_info(self, fn, y0, y1, h, f0, f1, ks):
        d = jnp.stack(
            [sum(float(w) * k for w, k in zip(row, ks, strict=True)) for row in RODAS5P_DENSE]
        )
        return dict(y0=y0, y1=y1, d=jax.vmap(fn.to_tree)(d))


# Shampine & Reichelt, "The MATLAB ODE suite" (SIAM J. Sci. Comput. 18, 1997), section 3:
# MATLAB's ode23s. A W-method: order 2 for any approximation of J (Rosenbrock methods need
# the exact one), with an error estimate of order 3 and an L-stable step.
_R23_D = float(1 / (2 + np.sqrt(2)))
_R23_E32 = float(6 + np.sqrt(2))


class Rosenbrock23Interpolation(AbstractStepInterpolation):
    """ode23s's dense output: `y(t0 + s h) = y0 + h (s (1 - s) k1 + s (s - 2d) k2) /
    (1 - 2d)` on `[t0, t1]` (`hk` holds `h k1` and `h k2`, leading axis 2)."""

    t0: Array
    t1: Array
    y0: PyTree[Array]
    hk: PyTree[Array]

    def _value(self, t):
        s = (t - self.t0) / (self.t1 - self.t0)

        def one(y0, hk):
            s_ = s.astype(y0.dtype)
            w1 = s_ * (1 - s_) / (1 - 2 * _R23_D)
            w2 = s_ * (s_ - 2 * _R23_D) / (1 - 2 * _R23_D)
            return y0 + w1 * hk[0] + w2 * hk[1]

        return jax.tree.map(one, self.y0, self.hk)


class Rosenbrock23(AbstractRosenbrock):
    """Rosenbrock23 (Shampine & Reichelt 1997; MATLAB's ode23s): a 2-stage W-method of
    order 2 with an order-3 error estimate, L-stable, robust to an inexact Jacobian; three
    linear solves with `W = I - h d J`, `d = 1 / (2 + sqrt 2)`, per step:

        k1 = W^-1 (F0 + h d T),  F1 = f(t0 + h/2, y0 + h k1 / 2),
        k2 = W^-1 (F1 - k1) + k1,  y1 = y0 + h k2,  F2 = f(t1, y1),
        k3 = W^-1 (F2 - e32 (k2 - F1) - 2 (k1 - F0) + h d T),  err = h (k1 - 2 k2 + k3) / 6,

    with `T = df/dt`, `e32 = 6 + sqrt 2`, and `F2` the next step's `F0`. For loose
    tolerances and mildly stiff problems. Arguments as `AbstractRosenbrock`'s."""

    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        Rosenbrock23Interpolation
    )

    def order(self, terms) -> int:
        return 2

    def error_order(self, terms) -> int:
        return 3

    def _gamma(self) -> float:
        return _R23_D

    def _stages(self, fn, t0, t1, flat_y0, f0, f_t, h, solve):
        c = h * _R23_D  # solve(r) = c W^-1 r

        def w_inv(r):
            x, used = solve(r)
            return x / jnp.where(c == 0, 1, c), used  # (c = 0: as inv_h above)

        hdt = c * f_t
        k1, u1 = w_inv(f0 + hdt)
        f1_mid = fn(t0 + 0.5 * (t1 - t0), flat_y0 + 0.5 * h * k1)
        k2, u2 = w_inv(f1_mid - k1)
        k2 = k2 + k1
        y_new = flat_y0 + h * k2
        f2 = fn(t1, y_new)
        k3, u3 = w_inv(f2 - _R23_E32 * (k2 - f1_mid) - 2 * (k1 - f0) + hdt)
        err = (h / 6) * (k1 - 2 * k2 + k3)
        return y_new, err, f2, (k1, k2, k3), u1 + u2 + u3

    def _evals_per_attempt(self) -> int:
        return 2  # F1 and F2 (= the next step's F0)

    def _num_stages(self) -> int:
        return 3

    def _dense_info(self, fn, y0, y1, h, f0, f1, ks):
        hk = jnp.stack([h * ks[0], h * ks[1]])
        return dict(y0=y0, hk=jax.vmap(fn.to_tree)(hk))
