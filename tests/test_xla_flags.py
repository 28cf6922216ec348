"""`import stiffnode` raises XLA:CPU's small-loop threshold (`stiffnode._xla_flags`)."""

import os
import subprocess
import sys

from stiffnode._xla_flags import SMALL_LOOP_BYTES, SMALL_LOOP_OPTION, with_small_loop_threshold


def test_the_option_joins_xla_flags_without_overriding_the_users():
    assert with_small_loop_threshold("") == (
        f"--xla_backend_extra_options={SMALL_LOOP_OPTION}={SMALL_LOOP_BYTES}"
    )
    # Other flags kept; an existing extra-options list extended, not replaced.
    assert with_small_loop_threshold("--xla_dump_to=/tmp/x --xla_backend_extra_options=a=1") == (
        f"--xla_dump_to=/tmp/x --xla_backend_extra_options=a=1,{SMALL_LOOP_OPTION}="
        f"{SMALL_LOOP_BYTES}"
    )
    users = f"--xla_backend_extra_options={SMALL_LOOP_OPTION}=1024"
    assert with_small_loop_threshold(users) == users


def _import_in_a_fresh_process(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)} | env
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=environ,
                          capture_output=True, text=True, check=True)  # fmt: skip


def test_import_sets_it_before_jax_starts_and_warns_after():
    """Set at import (the backend then reads it); a warning, and `XLA_FLAGS` unchanged, when
    JAX's backends started before; nothing with `STIFFNODE_XLA_DEFAULTS=0`."""
    show = "import os; print(os.environ.get('XLA_FLAGS', ''))"
    before = _import_in_a_fresh_process(f"import stiffnode; {show}")
    assert SMALL_LOOP_OPTION in before.stdout and "UserWarning" not in before.stderr
    after = _import_in_a_fresh_process(f"import jax; jax.devices(); import stiffnode; {show}")
    assert SMALL_LOOP_OPTION not in after.stdout
    assert "imported after JAX started its backends" in after.stderr
    off = _import_in_a_fresh_process(f"import stiffnode; {show}", STIFFNODE_XLA_DEFAULTS="0")
    assert SMALL_LOOP_OPTION not in off.stdout and "UserWarning" not in off.stderr
