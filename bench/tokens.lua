-- wrk request generator: POST /score with the tokens of $TOKENS_FILE in turn (an empty line
-- sends no Authorization header).
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = line
end
local i = 0

request = function()
  i = i % #tokens + 1
  local headers = { ["Host"] = "bench", ["Content-Type"] = "application/json" }
  if tokens[i] ~= "" then
    headers["Authorization"] = "Bearer " .. tokens[i]
  end
  return wrk.format("POST", "/score", headers, "{}")
end
