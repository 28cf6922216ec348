"""Batched POLLU solves with stiffnode's BDF, side by side in one run: how the members are
batched (one after another in a `lax.map`, one `vmap`, `solve_ensemble` in chunks), and the
vmapped solve at growing batch sizes (from 32 members on it used to deadlock XLA:CPU).

POLLU with its first 15 rate constants times 2^U(-1, 1), rtol 1e-7, atol 1e-12 (the
`ensembles.py` setting), one CPU device; compile time and the median wall time after
compilation of each compiled call.

Run: `python benchmarks/pollu_batching.py`; writes `results/pollu_batching.json`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment, time_compiled  # noqa: E402

OUT = Path(RESULTS) / "pollu_batching.json"
RTOL, ATOL = 1e-7, 1e-12


def main(members: int = 256, repeats: int = 5) -> dict:
    p = sn.problems.pollu()
    base, y0 = jnp.asarray(p.args), jnp.asarray(p.y0)
    u = np.random.default_rng(0).uniform(-1, 1, (members, 15))
    rates = base[None].repeat(members, 0).at[:, :15].multiply(2.0 ** jnp.asarray(u))

    def one(k):
        return sn.solve(p.vector_field, y0, p.t0, p.t1, args=k, solver="bdf", rtol=RTOL,
                        atol=ATOL).ys[-1]  # fmt: skip

    def ensemble(chunk):
        return lambda k: sn.solve_ensemble(p.vector_field, y0, p.t0, p.t1, args=k,
                                           batch_y0=False, solver="bdf", rtol=RTOL, atol=ATOL,
                                           chunk_size=chunk).ys[:, -1]  # fmt: skip

    ways = {"lax.map (one after another)": lambda k: jax.lax.map(one, k), "vmap": jax.vmap(one)}
    ways |= {f"solve_ensemble chunk {c}": ensemble(c) for c in (1, 8, 16, 64)}
    record = {"environment": environment(), "load_average": os.getloadavg(), "members": members,
              "rtol": RTOL, "atol": ATOL, "ways": {}, "vmap_batch_sizes": {}}  # fmt: skip
    reference = None
    for name, fn in ways.items():
        compile_s, run_s = time_compiled(fn, rates, repeats=repeats)
        ys = np.asarray(jax.jit(fn)(rates))
        reference = ys if reference is None else reference
        diff = float(np.max(np.abs(ys - reference) / (ATOL + RTOL * np.abs(reference))))
        record["ways"][name] = {"compile_s": compile_s, "wall_s": run_s,
                                "max_scaled_diff_vs_lax_map": diff}  # fmt: skip
        print(name, record["ways"][name], flush=True)
    for size in (32, 64, 128):
        compile_s, run_s = time_compiled(jax.vmap(one), rates[:size], repeats=repeats)
        record["vmap_batch_sizes"][size] = {"compile_s": compile_s, "wall_s": run_s}
        print("vmap", size, record["vmap_batch_sizes"][size], flush=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
