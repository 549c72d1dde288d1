#!/usr/bin/env bash
# Mutation testing with mutmut (the `mutation` extra), configured in setup.cfg's [mutmut] section.
# Not part of CI. It runs on a copy of the committed tree (git archive HEAD), never in the working
# tree; the copy's mutants/ folder keeps mutmut's results, so a second run re-tests only the
# functions whose code or tests changed.
#   mutation/run.sh                          every mutant of the configured modules
#   mutation/run.sh "llmnp.adamw*" ...       only mutants whose names match (mutmut's globs)
#   mutation/run.sh --survivors              after writing tests: the last run's survivors again, against
#                                            the tests as they are now (mutmut keeps a verdict otherwise)
# Then: $MUTATION_DIR/score.txt (score and survivors), cd $MUTATION_DIR && mutmut show NAME (one mutant).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dir=${MUTATION_DIR:-/tmp/llmnp-mutation}
mutmut=${MUTMUT:-$root/.venv/bin/mutmut}
mkdir -p "$dir"
find "$dir" -mindepth 1 -maxdepth 1 ! -name mutants -exec rm -rf {} +
git -C "$root" archive HEAD | tar -x -C "$dir"
cd "$dir"
if [ "${1:-}" = "--survivors" ]; then       # all but the ones listed in mutation/equivalent.txt
  shift
  python3 "$root/mutation/score.py" --reset "$dir"
fi
"$mutmut" run --max-children "${MUTATION_JOBS:-2}" "$@" | tr '\r' '\n' | grep -v '^[^ ]* *Running\|^[^ ]* *Generating' || true
# the score, equivalent mutants (mutation/equivalent.txt) left out, and every other survivor
python3 "$root/mutation/score.py" "$dir" | tee "$dir/score.txt" | head -n 20
echo "(all survivors: $dir/score.txt)"
