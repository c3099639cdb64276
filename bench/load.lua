-- wrk request generator for bench.py: GET $BENCH_PATH (no body, so Envoy keeps the connection
-- alive), one token of $BENCH_TOKENS per request in file order (an empty line sends no
-- Authorization header). With $BENCH_LIMIT > 0 the thread stops after that many answers and
-- says so on stderr (bench.py then ends wrk at once), so a population of never-seen tokens is
-- never sent twice; otherwise the tokens cycle until wrk's -d ends.
local requests = {}
local path = os.getenv("BENCH_PATH") or "/score"
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  local headers = { ["Host"] = "bench" }
  if line ~= "" then
    headers["Authorization"] = "Bearer " .. line
  end
  requests[#requests + 1] = wrk.format("GET", path, headers)
end
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local sent = 0

request = function()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end

if limit > 0 then
  local answered = 0
  response = function()
    answered = answered + 1
    if answered == limit then
      io.stderr:write("bench: limit reached\n")
      io.stderr:flush()
      wrk.thread:stop()
    end
  end
end
