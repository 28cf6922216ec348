"""A regression task from a real stiff simulator: an ensemble of the POLLU chemistry model.

The seed's climate task (E3SM land model, 15 inputs, 10 outputs, 1996 train / 500 test) is
not public; this builds the same kind of task. POLLU (Verwer 1994; 20 species, 25
reactions, 60 minutes) is solved with 15 of its rate constants scaled by factors
`f_j = 2^{u_j}`, `u_j ~ U[-1, 1]` (log-uniform within a factor of 2); the outputs are 10
species' concentrations at `t1`. Inputs are `u = log2 f` (already in `[-1, 1]`); outputs are
`log10` concentrations standardised per species with the training set's mean and standard
deviation. The raw ensemble is generated deterministically from a seed and cached on disk.
"""

import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import checkpoints
from .._validation import positive_int
from .datasets import Dataset

PERTURBED_RATES: tuple[int, ...] = tuple(range(15))
"""Indices (0-based) of the perturbed rate constants: `k_1 .. k_15`."""

OUTPUT_SPECIES: tuple[str, ...] = (
    "NO2",
    "NO",
    "O3",
    "HCHO",
    "CO",
    "ALD",
    "CO2",
    "PAN",
    "HNO3",
    "SO4",
)
"""The 10 output species (those whose final concentration is above 1e-4 ppm and changes)."""

RTOL, ATOL = 1e-7, 1e-12


def default_cache_dir() -> Path:
    """`$STIFFNODE_CACHE` or `~/.cache/stiffnode`."""
    return Path(os.environ.get("STIFFNODE_CACHE", Path.home() / ".cache" / "stiffnode"))


def pollu_final_state(
    log2_factors: Float[Array, "n 15"],
    *,
    solver: str = "bdf",
    batch: int = 256,
    progress: bool = False,
) -> Float[Array, "n 20"]:
    """POLLU's 20 concentrations at `t1 = 60` with `k_j -> k_j 2^{u_j}` for the perturbed j.

    `stiffnode.solve_ensemble` per batch of `batch` members (rtol 1e-7, atol 1e-12): over
    every device (of every process under `stiffnode.distributed`); the
    batches are the progress bar's steps.
    """
    from ..problems import pollu
    from ..solve_ensemble import solve_ensemble

    problem = pollu()
    u = np.asarray(log2_factors, np.float64)
    if u.ndim != 2 or u.shape[1] != len(PERTURBED_RATES):
        raise ValueError(f"log2_factors must have shape (n, {len(PERTURBED_RATES)}), got {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("log2_factors contains NaN or inf")
    batch = positive_int("batch", batch)
    idx = np.asarray(PERTURBED_RATES)

    with jax.enable_x64(True):
        base = jnp.asarray(problem.args, jnp.float64)
        y0 = jnp.asarray(problem.y0, jnp.float64)
        starts = range(0, len(u), batch)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="POLLU ensemble", unit="batch")
        out = []
        for s in starts:
            ub = u[s : s + batch]
            pad = batch - len(ub)  # one compiled shape for every batch
            ub = np.concatenate([ub, np.zeros((pad, ub.shape[1]))]) if pad else ub
            rates = base[None].repeat(batch, 0).at[:, idx].multiply(2.0 ** jnp.asarray(ub))
            # Members split over the devices (`solve_ensemble`).
            sol = solve_ensemble(
                problem.vector_field,
                y0,
                problem.t0,
                problem.t1,
                args=rates,
                batch_y0=False,
                solver=solver,
                rtol=RTOL,
                atol=ATOL,
            )
            out.append(np.asarray(sol.ys[:, -1])[: batch - pad])
    return np.concatenate(out)


def _raw_ensemble(seed, n, solver, cache_dir, progress):
    tag = f"pollu_ensemble_v1_seed{seed}_n{n}_{solver}_rtol{RTOL:g}_atol{ATOL:g}"
    path = None
    if cache_dir is not False:
        directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
        path = directory / f"{tag}_{hashlib.sha1(tag.encode()).hexdigest()[:8]}.npz"
        cached = checkpoints.load_or_set_aside(path, ("log2_factors", "concentrations"))
        if cached is not None:
            return cached[0]["log2_factors"], cached[0]["concentrations"]
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, size=(n, len(PERTURBED_RATES)))
    c = pollu_final_state(u, solver=solver, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save(path, {"log2_factors": u, "concentrations": c})
    return u, c


def pollu_ensemble(
    seed: int = 0,
    n_train: int = 1996,
    n_test: int = 500,
    *,
    solver: str = "bdf",
    cache_dir: str | os.PathLike | None | bool = None,
    dtype=None,
    progress: bool = False,
) -> Dataset:
    """The POLLU ensemble as a `Dataset`: inputs `u = log2(rate factors)` `(n, 15)` in
    `[-1, 1]`, outputs standardised `log10` concentrations `(n, 10)` of `OUTPUT_SPECIES`.

    The first `n_train` members train, the next `n_test` test; the standardisation uses the
    training members only. Solved once and cached (`cache_dir`: a directory, `None` for
    `default_cache_dir()`, `False` for no cache); `solver` is any stiff solver name of
    `stiffnode.solve`.
    """
    from ..problems import POLLU_SPECIES

    n_train = positive_int("n_train", n_train)
    n_test = positive_int("n_test", n_test)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    u, c = _raw_ensemble(seed, n_train + n_test, solver, cache_dir, progress)
    cols = [list(POLLU_SPECIES).index(s) for s in OUTPUT_SPECIES]
    conc = c[:, cols]
    if not np.all(conc > 0):
        raise RuntimeError("non-positive output concentration in the POLLU ensemble")
    logc = np.log10(conc)
    mean, std = logc[:n_train].mean(0), logc[:n_train].std(0)
    y = (logc - mean) / std
    dtype = jnp.float32 if dtype is None else dtype
    arrays = [u[:n_train], y[:n_train], u[n_train:], y[n_train:]]
    return Dataset(*(jnp.asarray(a, dtype) for a in arrays))
