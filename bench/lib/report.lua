-- wrk script: only a done() hook, so the request path stays wrk's fast C path.
-- Prints one machine-readable line with exact totals (wrk's own "Transfer/sec"
-- is rounded to 2 decimals, e.g. "1.16GB"); bench/lib/report.py parses it.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LMBENCH bytes=%d duration_us=%d requests=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.bytes, summary.duration, summary.requests,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
