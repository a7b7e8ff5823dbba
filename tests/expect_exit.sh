# expect_exit.sh — sourced by the pgtx-race test scripts; needs $tmp and fail().
# expect STATUS WHAT -- COMMAND...: COMMAND exits STATUS with exactly one
# line on stderr and nothing on stdout (a refusal or a failure to run is a
# one-line reason, never a usage text or a half-printed report).
expect() {
  want=$1 what=$2; shift 3
  rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
  [ "$rc" -eq "$want" ] || fail "$what: exit $rc, want $want; stderr: $(cat "$tmp/err")"
  [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$what: want one stderr line, got: $(cat "$tmp/err")"
  [ ! -s "$tmp/out" ] || fail "$what: printed on stdout: $(cat "$tmp/out")"
}
