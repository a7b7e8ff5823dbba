#!/usr/bin/env bash
# fuzz/run.sh BUILD SECONDS [TARGET...] — runs each libFuzzer target of
# BUILD (made by `make fuzz`) for SECONDS over a copy of its corpus, so
# that the checked-in fuzz/corpus/ never changes.  A crash fails the run
# and leaves its input in BUILD as crash-<target>-<hash> (also slow- and
# leak-, oom-, timeout-); the last line per target gives the executions and
# the coverage reached.
set -euo pipefail
build=$1 seconds=$2
shift 2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(body router token config conninfo)
here=$(cd "$(dirname "$0")" && pwd)
failed=0
summary=()
for t in "${targets[@]}"; do
  work="$build/fuzz-corpus/$t"
  rm -rf "$work"
  mkdir -p "$work"
  cp "$here/corpus/$t"/* "$work/"
  log="$build/fuzz-$t.log"
  echo "== fuzz_$t: ${seconds} s over a copy of fuzz/corpus/$t"
  # close_fd_mask=3: the targets' own output (usage, error lines) is noise;
  # libFuzzer's reports still come through.  The timeout and memory bound
  # turn a hang or a runaway allocation into a failure too.
  if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
       UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
       "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -print_final_stats=1 \
         -close_fd_mask=3 -timeout=10 -rss_limit_mb=2048 \
         -artifact_prefix="$build/crash-$t-" "$work" >"$log" 2>&1; then
    failed=1
    tail -n 60 "$log"
    echo "fuzz_$t: FAILED (input in $build/crash-$t-*, log $log)"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  summary+=("fuzz_$t: ${runs:-?} executions, ${cov:-no coverage line}")
done
printf '%s\n' "${summary[@]}"
exit $failed
