#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, then every test (lab tests boot hosts, need root).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k lab -x`).
# Two lanes (pytest-xdist, a whole module per lane at a time, the longest first: tests/conftest.py):
# lab tests wait on boots and services about half of the time. KTD_TEST_LANES=1 runs one lane.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || exit $?
export PATH="$PWD/.venv/bin:$PATH"

lanes=${KTD_TEST_LANES:-2}
case "$lanes" in
  1) xdist=() ;;
  [2-9]) xdist=(-n "$lanes" --dist loadfile --no-loadscope-reorder) ;;
  *) echo "test.sh: KTD_TEST_LANES must be 1 to 9, not '$lanes'" >&2; exit 2 ;;
esac

log=$(mktemp)
trap 'rm -f "$log"' EXIT
.venv/bin/python -m pytest tests -p no:cacheprovider "${xdist[@]}" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

summary=$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$log" | tail -n 1)
echo "test.sh: ${summary:-pytest printed no summary line} (exit $rc)"
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
fi
exit "$rc"
