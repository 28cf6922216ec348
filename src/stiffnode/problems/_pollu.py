"""POLLU: the chemistry of the RIVM air pollution model (Verwer 1994), 20 species, 25 reactions."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

RATES = np.array(
    [
        0.35, 26.6, 1.23e4, 8.6e-4, 8.2e-4, 1.5e4, 1.3e-4, 2.4e4, 1.65e4, 9.0e3,
        2.2e-2, 1.2e4, 1.88, 1.63e4, 4.8e6, 3.5e-4, 1.75e-2, 1.0e8, 4.44e11, 1.24e3,
        2.1, 5.78, 4.74e-2, 1.78e3, 3.12,
    ]
)  # fmt: skip
"""`k1 .. k25` (ppm, minutes), Verwer (1994) / IVPtestset POLLU."""

SPECIES = (
    "NO2", "NO", "O3P", "O3", "HO2", "OH", "HCHO", "CO", "ALD", "MEO2",
    "C2O3", "CO2", "PAN", "CH3O", "HNO3", "O1D", "SO2", "SO4", "NO3", "N2O5",
)  # fmt: skip

REFERENCE = np.array(
    [
        0.5646255480022769e-1, 0.1342484130422339e0, 0.4139734331099427e-8,
        0.5523140207484359e-2, 0.2018977262302196e-6, 0.1464541863493966e-6,
        0.7784249118997964e-1, 0.3245075353396018e0, 0.7494013383880406e-2,
        0.1622293157301561e-7, 0.1135863833257075e-7, 0.2230505975721359e-2,
        0.2087162882798630e-3, 0.1396921016840158e-4, 0.8964884856898295e-2,
        0.4352846369330103e-17, 0.6899219696263405e-2, 0.1007803037365946e-3,
        0.1772146513969984e-5, 0.5682943292316392e-4,
    ]
)  # fmt: skip
"""The state at `t = 60`, IVPtestset (Mazzia & Magherini), problem POLLU (RADAU5 in quadruple
precision, `rtol = atol = 1.1e-18`)."""


def vector_field(t, y, args):
    """`y' = S r(y)`, mass-action rates `r_j = k_j prod(reactants of j)`, `args = k` (25,);
    written species by species as in Verwer (1994)."""
    k = args
    y1, y2, y3, y4, y5, y6, y7, y9, y10, y11, y13, y14, y16, y17, y19, y20 = (
        y[i - 1] for i in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 14, 16, 17, 19, 20)
    )
    r1, r2, r3 = k[0] * y1, k[1] * y2 * y4, k[2] * y5 * y2
    r4, r5, r6 = k[3] * y7, k[4] * y7, k[5] * y7 * y6
    r7, r8, r9 = k[6] * y9, k[7] * y9 * y6, k[8] * y11 * y2
    r10, r11, r12 = k[9] * y11 * y1, k[10] * y13, k[11] * y10 * y2
    r13, r14, r15 = k[12] * y14, k[13] * y1 * y6, k[14] * y3
    r16, r17, r18 = k[15] * y4, k[16] * y4, k[17] * y16
    r19, r20, r21 = k[18] * y16, k[19] * y17 * y6, k[20] * y19
    r22, r23, r24, r25 = k[21] * y19, k[22] * y1 * y4, k[23] * y19 * y1, k[24] * y20
    return jnp.stack(
        [
            -r1 - r10 - r14 - r23 - r24 + r2 + r3 + r9 + r11 + r12 + r22 + r25,
            -r2 - r3 - r9 - r12 + r1 + r21,
            -r15 + r1 + r17 + r19 + r22,
            -r2 - r16 - r17 - r23 + r15,
            -r3 + 2.0 * r4 + r6 + r7 + r13 + r20,
            -r6 - r8 - r14 - r20 + r3 + 2.0 * r18,
            -r4 - r5 - r6 + r13,
            r4 + r5 + r6 + r7,
            -r7 - r8,
            -r12 + r7 + r9,
            -r9 - r10 + r8 + r11,
            r9,
            -r11 + r10,
            -r13 + r12,
            r14,
            -r18 - r19 + r16,
            -r20,
            r20,
            -r21 - r22 - r24 + r23 + r25,
            -r25 + r24,
        ]
    )


# The numpy version is built independently from the reaction list (reactants -> products).
REACTIONS = (
    ("NO2", "NO O3P"),
    ("NO O3", "NO2"),
    ("HO2 NO", "NO2 OH"),
    ("HCHO", "HO2 HO2 CO"),
    ("HCHO", "CO"),
    ("HCHO OH", "HO2 CO"),
    ("ALD", "MEO2 HO2 CO"),
    ("ALD OH", "C2O3"),
    ("C2O3 NO", "NO2 MEO2 CO2"),
    ("C2O3 NO2", "PAN"),
    ("PAN", "C2O3 NO2"),
    ("MEO2 NO", "CH3O NO2"),
    ("CH3O", "HCHO HO2"),
    ("NO2 OH", "HNO3"),
    ("O3P", "O3"),
    ("O3", "O1D"),
    ("O3", "O3P"),
    ("O1D", "OH OH"),
    ("O1D", "O3P"),
    ("SO2 OH", "SO4 HO2"),
    ("NO3", "NO"),
    ("NO3", "NO2 O3P"),
    ("NO2 O3", "NO3"),
    ("NO3 NO2", "N2O5"),
    ("N2O5", "NO3 NO2"),
)
"""The 25 reactions of Verwer (1994), species names as in `SPECIES`."""

_INDEX = {name: i for i, name in enumerate(SPECIES)}
_STOICH = np.zeros((20, 25))
_FIRST = np.zeros(25, dtype=int)
_SECOND = np.full(25, 20)  # 20 points at an appended 1.0: a first-order reaction
for _j, (_lhs, _rhs) in enumerate(REACTIONS):
    _reactants = [_INDEX[s] for s in _lhs.split()]
    _FIRST[_j] = _reactants[0]
    if len(_reactants) == 2:
        _SECOND[_j] = _reactants[1]
    for _i in _reactants:
        _STOICH[_i, _j] -= 1.0
    for _i in (_INDEX[s] for s in _rhs.split()):
        _STOICH[_i, _j] += 1.0


def numpy_rhs(t, y, k):
    """`S r`, `r = k * y[first] * y[second]` (stoichiometry `S` from `REACTIONS`)."""
    y1 = np.append(y, 1.0)
    return _STOICH @ (k * y1[_FIRST] * y1[_SECOND])


def numpy_jac(t, y, k):
    """`S dr/dy`, dense 20 x 20."""
    y1 = np.append(y, 1.0)
    drdy = np.zeros((25, 21))
    rows = np.arange(25)
    np.add.at(drdy, (rows, _FIRST), k * y1[_SECOND])
    np.add.at(drdy, (rows, _SECOND), k * y1[_FIRST])
    return _STOICH @ drdy[:, :20]


def pollu(rates=None) -> StiffProblem:
    """POLLU (Verwer 1994), `y0`: NO 0.2, O3 0.04, HCHO 0.1, CO 0.3, ALD 0.01, SO2 0.007 ppm, the
    rest 0, on `[0, 60]` minutes; `args = k`, the 25 rate constants (default `RATES`), an array
    to perturb or `vmap` over. Conserved: nitrogen
    `y1 + y2 + y13 + y15 + y19 + 2 y20` and sulfur `y17 + y18`.

    Tolerances `rtol = atol = 1e-6` (deTestSet's `pollution`). `reference` (IVPtestset) only
    for the default rates.
    """
    k = RATES.copy() if rates is None else np.asarray(rates, dtype=np.float64)
    if k.shape != (25,):
        raise ValueError(f"rates must have shape (25,), got {k.shape}")
    y0 = np.zeros(20)
    for name, value in (("NO", 0.2), ("O3", 0.04), ("HCHO", 0.1), ("CO", 0.3), ("ALD", 0.01),
                        ("SO2", 0.007)):  # fmt: skip
        y0[_INDEX[name]] = value
    return StiffProblem(
        name="pollu",
        vector_field=vector_field,
        y0=y0,
        t0=0.0,
        t1=60.0,
        args=k,
        rtol=1e-6,
        atol=1e-6,
        reference=REFERENCE.copy() if np.array_equal(k, RATES) else None,
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
