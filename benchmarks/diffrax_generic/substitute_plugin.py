"""pytest plugin: run diffrax 0.7.2's solver-generic tests with ONE substituted solver.

SUBSTITUTE=kvaerno5|bdf|rodas3|none  (none = diffrax's original tests, unchanged)

Usage: `DIFFRAX_REPO=/path/to/diffrax bash run.sh bdf` (run.sh beside this file).

How the substitution is done (test ids / number of cases are unchanged):
* Tests parametrised over a solver (`solver` / `solver_ctr` argument): the argument is
  replaced just before the call.
    - test_basic, test_grad_implicit_solve: every implicit diffrax solver in these
      parametrisations is built with `root_finder=VeryChord(rtol=1e-3, atol=1e-6)`, so the
      substitute is built the same way, in every case.
    - test_ode_order: the substitute is built with defaults; the test itself then calls
      `helpers.implicit_tol(solver)` (works on stiffnode solvers: they are
      `AbstractImplicitSolver`s whose root_finder has rtol/atol/norm).
    - test_reverse_time: `solver_ctr` -> a constructor returning the default substitute.
* Tests that hard-code a solver in the body (test_saveat_solution.py: Dopri5 / Euler):
  `diffrax.diffeqsolve` is wrapped for the duration of the test and its `solver` argument is
  replaced by the default substitute.
* Diagnostic variant SUBSTITUTE_TOL=1: in test_reverse_time and the hard-coded-solver tests
  the substitute is `implicit_tol(substitute)` (root_finder rtol=1e-3, atol=1e-6,
  norm=rms_norm, as diffrax's helper does), so fixed-step cases can run at all.
* Diagnostic variant RANK_PROMOTION=allow: undo conftest's strict rank promotion.
Step-size controllers are always left as the test wrote them.
"""

import functools
import os

import diffrax
import pytest

SUB = os.environ.get("SUBSTITUTE", "none").lower()
SUB_TOL = os.environ.get("SUBSTITUTE_TOL", "0") == "1"
# Diagnostic only: RANK_PROMOTION=allow overrides conftest's jax_numpy_rank_promotion="raise".
RANK_PROMOTION = os.environ.get("RANK_PROMOTION")

PARAM_TESTS = {"test_basic", "test_ode_order", "test_grad_implicit_solve", "test_reverse_time"}
TOL_IN_PARAMS = {"test_basic", "test_grad_implicit_solve"}
BODY_TESTS = {
    "test_saveat_solution",
    "test_saveat_solution_skip_steps",
    "test_saveat_solution_skip_vs_saveat",
    "test_saveat_steps_with_event",
    "test_subsaveat",
    "test_trivial_dense",
    "test_t0_eq_t1",
    "test_t0_eq_t1_complicated",
}


def _cls():
    if SUB == "kvaerno5":
        return diffrax.Kvaerno5
    if SUB == "bdf":
        import stiffnode.solvers as s

        return s.BDF
    if SUB == "rodas3":
        import stiffnode.solvers as s

        return s.Rodas3
    raise ValueError(SUB)


def make(**kw):
    return _cls()(**kw)


def _tol(solver):
    import equinox as eqx
    import optimistix as optx

    return eqx.tree_at(
        lambda s: (s.root_finder.rtol, s.root_finder.atol, s.root_finder.norm),
        solver,
        (1e-3, 1e-6, optx.rms_norm),
    )


def _name(item):
    return item.originalname or item.name.split("[")[0]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if SUB == "none":
        yield
        return
    if RANK_PROMOTION:
        import jax

        jax.config.update("jax_numpy_rank_promotion", RANK_PROMOTION)
    name = _name(pyfuncitem)
    fa = pyfuncitem.funcargs
    undo = None
    if name in PARAM_TESTS:
        if name in TOL_IN_PARAMS:
            sub = make(root_finder=diffrax.VeryChord(rtol=1e-3, atol=1e-6))
        elif name == "test_reverse_time" and SUB_TOL:
            sub = _tol(make())
        else:
            sub = make()
        if "solver" in fa:
            fa["solver"] = sub
        elif "solver_ctr" in fa:
            fa["solver_ctr"] = lambda: sub
        else:
            raise RuntimeError(f"no solver argument in {pyfuncitem.nodeid}")
    elif name in BODY_TESTS:
        sub = _tol(make()) if SUB_TOL else make()
        orig = diffrax.diffeqsolve

        @functools.wraps(orig)
        def patched(terms, solver=None, *args, **kwargs):
            return orig(terms, sub, *args, **kwargs)

        diffrax.diffeqsolve = patched

        def undo():
            diffrax.diffeqsolve = orig

    try:
        yield
    finally:
        if undo is not None:
            undo()


def pytest_report_header(config):
    return f"SUBSTITUTE={SUB} SUBSTITUTE_TOL={SUB_TOL} RANK_PROMOTION={RANK_PROMOTION}"
