#!/usr/bin/env bash
# Follow tests/gpu/run.sh for at most LIMIT seconds (default 560: inside the device tool's 10-minute
# calls); return as soon as it ends. Prints the run's step lines as they come, then copies its
# results into $OUT (the device tool brings those back). Exit: the run's code, or 75 while it runs.
state=${KTD_GPU_STATE:-/tmp/ktd-gpu}
limit=${1:-560}
end=$(( $(date +%s) + limit ))
seen=0
while :; do
  if [ -f "$state/out/summary.txt" ]; then
    total=$(wc -l <"$state/out/summary.txt")
    [ "$total" -gt "$seen" ] && sed -n "$((seen + 1)),${total}p" "$state/out/summary.txt" && seen=$total
  fi
  [ -f "$state/done" ] && break
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 3
done
if [ -n "${OUT:-}" ] && [ -d "$state/out" ]; then
  tail -c 15000000 "$state/out/run.log" >"$OUT/run.log" 2>/dev/null
  for f in summary.txt status.json status2.json status3.json status4.json remove2.txt chat.json build.log api.log python-env.json; do
    [ -f "$state/out/$f" ] && tail -c 15000000 "$state/out/$f" >"$OUT/$f"
  done
fi
if [ -f "$state/done" ]; then
  echo "--- run ended: exit $(cat "$state/done"); last lines of run.log:"; tail -n 60 "$state/out/run.log"
  exit "$(cat "$state/done")"
fi
echo "--- still running (poll again); last lines of run.log:"; tail -n 15 "$state/out/run.log" 2>/dev/null
exit 75
