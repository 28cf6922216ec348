#!/usr/bin/env bash
# diffrax's own solver-generic tests with one stiffnode solver substituted (see
# substitute_plugin.py). diffrax's tests are not in its wheel: check out its repository at
# the installed version's tag (e.g. v0.7.2) and point DIFFRAX_REPO at it.
#
#   DIFFRAX_REPO=/path/to/diffrax bash benchmarks/diffrax_generic/run.sh bdf|rodas3|kvaerno5|none
#
# Optional: SUBSTITUTE_TOL=1, RANK_PROMOTION=allow (diagnostics), SELECTION=file.
# Writes results/<name>.xml and .log in this folder; `python summarize.py results/*.xml`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${DIFFRAX_REPO:?set DIFFRAX_REPO to a checkout of diffrax at the installed version}"
sub="$1"; shift
name="$sub${SUBSTITUTE_TOL:+_tol$SUBSTITUTE_TOL}${RANK_PROMOTION:+_rank$RANK_PROMOTION}"
mkdir -p "$here/results"
cd "$DIFFRAX_REPO"
SUBSTITUTE="$sub" PYTHONPATH="$here" python -m pytest -q -p no:cacheprovider \
  -p substitute_plugin $(cat "${SELECTION:-$here/selection.txt}") -n 2 -rfE --tb=short \
  --junitxml="$here/results/$name.xml" "$@" > "$here/results/$name.log" 2>&1 || true
tail -3 "$here/results/$name.log"
