-- gate_sweep: hand free slots of one gate to its waiters. Catches slots freed without a
-- release (a reservation whose message never started, an expired holder).
-- KEYS[1..21] run keys built for the placeholder run id '-' and the gate's limit key
-- ARGV[1] '-'   ARGV[2] limit key
-- Returns {{id, token, queue, workflow, limit_key}, ...} to publish.
return handoff(ARGV[1], ARGV[2], now_ms())
