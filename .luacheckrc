-- luacheck settings for falq's Redis scripts (shared/lua/; `make lint`).
-- Redis runs Lua 5.1 with the redis, cjson and KEYS/ARGV globals; every script but lib.lua that
-- calls `lib.` is sent after lib.lua (falq.shared.scripts), so `lib` is a read-only global to it.
std = "lua51"
read_globals = {"redis", "cjson", "KEYS", "ARGV", "lib"}
max_line_length = 120
files["shared/lua/lib.lua"] = {
  read_globals = {"redis", "cjson"},
  ignore = {"241"},  -- `lib` is filled with functions here and read by the script after it
}
