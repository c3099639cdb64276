-- wrk script for the soak: sends the tokens of $TOKENS_FILE in turn (an empty line sends no
-- Authorization header) and counts answers by status. Prints "STATUS <code> <count>", "SENT
-- <n>" and latency lines at the end (after -d, or when the test stops wrk with SIGINT).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    tokens[#tokens + 1] = line
  end
  counts = {}
  sent = 0
  i = 0
end

function request()
  i = i % #tokens + 1
  sent = sent + 1
  local headers = { ["Host"] = "soak.example.com" }
  if tokens[i] ~= "" then
    headers["Authorization"] = "Bearer " .. tokens[i]
  end
  return wrk.format("GET", "/score", headers)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("counts")) do
      io.write(string.format("STATUS %d %d\n", status, count))
    end
    io.write(string.format("SENT %d\n", thread:get("sent")))
  end
  io.write(string.format("P50_US %d\nP99_US %d\n", latency:percentile(50), latency:percentile(99)))
end
