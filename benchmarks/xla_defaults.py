"""What `import stiffnode` changes in a process: XLA:CPU's small-loop threshold raised to
262144 bytes (`stiffnode._xla_flags`), against XLA's default (`STIFFNODE_XLA_DEFAULTS=0`).

The same work in fresh processes, `--rounds` per setting run alternately, timed after
compilation (the fastest of `--repeats` calls and of the rounds, as this shared machine's
other load only adds time) and at the first call (trace + compile + run; the fastest round):

- stiffnode's solves of small stiff problems (Robertson to t = 1e5, van der Pol mu = 1e3,
  HIRES; rtol 1e-6) with BDF, Rodas5P and "auto", a non-stiff one (van der Pol mu = 1 to
  t = 20) with Tsit5 and "auto", and one gradient
  (Robertson's log rate constants through Rodas5P, `recursive` and `interpolating`);
- other JAX work in the same process, which the option must not slow: an equinox MLP's
  Adam step (2 hidden layers of 256, batch 256) and 50 such steps in a `lax.scan` (a loop
  with dots, which the option leaves alone), and an elementwise `fori_loop` over 10^5
  numbers (above the threshold: untouched).

Writes `benchmarks/results/xla_defaults.json` and prints a table. Run:
`python benchmarks/xla_defaults.py [--repeats 20] [--rounds 2]`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, environment
from stiffnode.checkpoints import write_text

OUT = Path(RESULTS)


def _first_and_best(fn, arg, repeats):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - start)
    return {"first_call_s": first, "ms": 1e3 * best}


def worker(repeats: int) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import stiffnode as sn  # before any JAX work, as a user would

    jax.config.update("jax_enable_x64", True)
    from stiffnode.problems import hires, robertson, van_der_pol

    out = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    stiff = ("bdf", "rodas5p", "auto")
    problems = {
        "robertson": (robertson(), stiff),
        "van_der_pol_1e3": (van_der_pol(mu=1e3), stiff),
        "hires": (hires(), stiff),
        "van_der_pol_1": (van_der_pol(mu=1.0, t1=20.0), ("tsit5", "auto")),
    }
    for name, (p, solvers) in problems.items():
        for solver in solvers:

            def run(y0, p=p, solver=solver):
                sol = sn.solve(
                    p.vector_field,
                    y0,
                    p.t0,
                    p.t1,
                    solver=solver,
                    args=p.args,
                    rtol=1e-6,
                    atol=p.atol,
                    max_steps=200_000,
                )
                return sol.ys

            out[f"solve/{name}/{solver}"] = _first_and_best(
                jax.jit(run), jnp.asarray(p.y0), repeats
            )

    p = robertson()
    for adjoint in ("recursive", "interpolating"):

        def loss(lk, adjoint=adjoint):
            sol = sn.solve(
                lambda t, y, a: p.vector_field(t, y, jnp.exp(a)),
                jnp.asarray(p.y0),
                0.0,
                1e5,
                solver="rodas5p",
                args=lk,
                rtol=1e-8,
                atol=1e-12,
                saveat=jnp.logspace(-5, 5, 24),
                adjoint=adjoint,
                max_steps=4096,
            )
            return jnp.sum(sol.ys**2)

        lk = jnp.log(jnp.asarray(p.args))
        out[f"gradient/robertson/{adjoint}"] = _first_and_best(jax.jit(jax.grad(loss)), lk, repeats)

    key = jax.random.key(0)
    mlp = eqx.nn.MLP(64, 10, 256, 2, key=key)
    x = jax.random.normal(key, (256, 64))
    y = jax.random.normal(key, (256, 10))
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)

    def step(carry, _):
        params_, opt_state = carry
        model = lambda q: jnp.mean((jax.vmap(eqx.combine(q, static))(x) - y) ** 2)  # noqa: E731
        grads = jax.grad(model)(params_)
        updates, opt_state = optimizer.update(grads, opt_state, params_)
        return (optax.apply_updates(params_, updates), opt_state), None

    state = (params, optimizer.init(params))
    out["mlp/adam_step"] = _first_and_best(jax.jit(lambda s: step(s, None)[0]), state, repeats)
    out["mlp/scan_50_steps"] = _first_and_best(
        jax.jit(lambda s: jax.lax.scan(step, s, None, length=50)[0]), state, repeats
    )
    big = jnp.linspace(0.0, 1.0, 100_000)
    out["fori_loop_1e5_numbers"] = _first_and_best(
        jax.jit(lambda v: jax.lax.fori_loop(0, 100, lambda i, u: jnp.sin(u) + 0.5 * u, v)),
        big,
        repeats,
    )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeats)))
        return
    # Each setting's process run `--rounds` times, alternately, the fastest kept per row:
    # one process per setting swings 1.5x on this shared machine.
    runs = {"xla_default": [], "stiffnode_default": []}
    for _ in range(args.rounds):
        for label, opt_out in (("xla_default", "0"), ("stiffnode_default", "1")):
            env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
            env["STIFFNODE_XLA_DEFAULTS"] = opt_out
            done = subprocess.run(
                [sys.executable, __file__, "--worker", "--repeats", str(args.repeats)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = {
        label: {
            key: {f: min(r[key][f] for r in rounds) for f in ("ms", "first_call_s")}
            for key in rounds[0]
            if key != "XLA_FLAGS"
        }
        for label, rounds in runs.items()
    }
    rows = {}
    for key in best["xla_default"]:
        before, after = best["xla_default"][key], best["stiffnode_default"][key]
        rows[key] = {
            "ms_xla_default": before["ms"],
            "ms_stiffnode_default": after["ms"],
            "speedup": before["ms"] / after["ms"],
            "first_call_s_xla_default": before["first_call_s"],
            "first_call_s_stiffnode_default": after["first_call_s"],
        }
        print(
            f"{key:36s} {before['ms']:9.3f} -> {after['ms']:9.3f} ms  x{rows[key]['speedup']:5.2f}"
            f"   first call {before['first_call_s']:5.2f} -> {after['first_call_s']:5.2f} s"
        )
    record = {"rows": rows, "runs": runs, "environment": environment()}
    path = OUT / "xla_defaults.json"
    write_text(path, json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
