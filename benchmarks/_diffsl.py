"""The stiff test problems in DiffSL, the language diffsol (pydiffsol) compiles, for the
diffsol anchor of `stiff_solvers.py`.

Written here by hand from the equations (POLLU generated from the reaction list
`stiffnode.problems.POLLU_REACTIONS`, as the numpy right-hand side is), not lowered from
stiffnode's jax vector fields: diffsol computes the Jacobian itself (automatic
differentiation of the compiled right-hand side). `PARAMS[name](problem)` gives the
parameter vector `pydiffsol.Ode.solve*` takes (empty where the problem has none).
`check(name)` compares the compiled right-hand side with the problem's numpy one.
"""

import numpy as np

from stiffnode import problems


def _block(name: str, items) -> str:
    return f"{name} {{\n" + "".join(f"  {s},\n" for s in items) + "}\n"


def _num(x) -> str:
    return repr(float(x))


def robertson() -> str:
    return (
        _block("in_i", ["k1 = 0.04", "k2 = 3.0e7", "k3 = 1.0e4"])
        + _block("u_i", ["y1 = 1.0", "y2 = 0.0", "y3 = 0.0"])
        + _block(
            "F_i",
            [
                "-k1 * y1 + k3 * y2 * y3",
                "k1 * y1 - k2 * y2 * y2 - k3 * y2 * y3",
                "k2 * y2 * y2",
            ],
        )
    )


def hires() -> str:
    y0 = problems.hires().y0
    return _block("u_i", [f"y{i + 1} = {_num(v)}" for i, v in enumerate(y0)]) + _block(
        "F_i",
        [
            "-1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007",
            "1.71 * y1 - 8.75 * y2",
            "-10.03 * y3 + 0.43 * y4 + 0.035 * y5",
            "8.32 * y2 + 1.71 * y3 - 1.12 * y4",
            "-1.745 * y5 + 0.43 * y6 + 0.43 * y7",
            "-280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7",
            "280.0 * y6 * y8 - 1.81 * y7",
            "-280.0 * y6 * y8 + 1.81 * y7",
        ],
    )


def orego() -> str:
    return _block("u_i", ["y1 = 1.0", "y2 = 2.0", "y3 = 3.0"]) + _block(
        "F_i",
        [
            "77.27 * (y2 + y1 * (1.0 - 8.375e-6 * y1 - y2))",
            "(y3 - (1.0 + y1) * y2) / 77.27",
            "0.161 * (y1 - y3)",
        ],
    )


def van_der_pol() -> str:
    return (
        _block("in_i", ["mu = 1000.0"])
        + _block("u_i", ["y1 = 2.0", "y2 = 0.0"])
        + _block("F_i", ["y2", "mu * (1.0 - y1 * y1) * y2 - y1"])
    )


def pollu() -> str:
    """Rates `r_j = k_j * (reactants)` as named scalars, `F_i` the sum of `+-r_j` over the
    reactions producing/consuming species i."""
    index = {s: i + 1 for i, s in enumerate(problems.POLLU_SPECIES)}
    terms: dict[int, list[str]] = {i: [] for i in index.values()}
    rates = ""
    for j, (lhs, rhs) in enumerate(problems.POLLU_REACTIONS, start=1):
        rates += f"r{j} {{ " + " * ".join([f"k{j}"] + [f"y{index[s]}" for s in lhs.split()])
        rates += " }\n"
        for s in lhs.split():
            terms[index[s]].append(f"- r{j}")
        for s in rhs.split():
            terms[index[s]].append(f"+ r{j}")
    y0 = problems.pollu().y0
    return (
        _block("in_i", [f"k{j + 1} = {_num(k)}" for j, k in enumerate(problems.POLLU_RATES)])
        + _block("u_i", [f"y{i + 1} = {_num(v)}" for i, v in enumerate(y0)])
        + rates
        + _block("F_i", [" ".join(terms[i]).removeprefix("+ ") for i in sorted(terms)])
    )


CODE = {
    "robertson": robertson,
    "hires": hires,
    "orego": orego,
    "van_der_pol": van_der_pol,
    "pollu": pollu,
}
"""Problem name -> DiffSL source (a function, so that nothing is built at import)."""

PARAMS = {
    "robertson": lambda p: np.asarray(p.args, np.float64),
    "hires": lambda p: np.zeros(0),
    "orego": lambda p: np.zeros(0),
    "van_der_pol": lambda p: np.atleast_1d(np.asarray(p.args, np.float64)),
    "pollu": lambda p: np.asarray(p.args, np.float64),
}


def ode(name: str, rtol: float, atol: float):
    """A compiled `pydiffsol.Ode` (BDF, dense nalgebra LU, the default JIT backend)."""
    import pydiffsol as ds

    solver = ds.Ode(CODE[name](), matrix_type=ds.nalgebra_dense, ode_solver=ds.bdf)
    solver.rtol, solver.atol = rtol, atol
    return solver


def check(name: str, seed: int = 0) -> float:
    """Max relative difference between the compiled right-hand side and the problem's numpy
    one at a random positive state."""
    p = problems.PROBLEMS[name]()
    solver = ode(name, 1e-6, 1e-6)
    y = np.random.default_rng(seed).uniform(0.1, 1.0, p.n)
    ours = np.asarray(solver.rhs(PARAMS[name](p), 0.0, y))
    theirs = problems.rhs_numpy(p)(0.0, y)
    return float(np.max(np.abs(ours - theirs) / (np.abs(theirs) + 1e-300)))
