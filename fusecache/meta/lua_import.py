"""Lua script of `fusecache import`: files whose data stays in another bucket.

Keys besides those of lua.py:
    {P}ext       hash  registry number -> JSON {src, key, etag, size}: one version of one
                       source object (external.py); its chunks are the external slices
                       layout.external_id(number, chunk)
    {P}extsrc    hash  source number -> JSON {storage, bucket, access_key, secret_key}
"""

from __future__ import annotations

from ..layout import EXT_BASE, EXT_CHUNK_BITS

# KEYS: {P}ext  ARGV: P, now, then per file: parent, name, new inode, mtime (packed), size,
#       registry number, registry record (JSON)
# Creates regular files (mode 0644, owner root) whose chunks are external slices, charging
# their lengths to the volume and to the quotas above. A name already taken is skipped
# (a rerun, or a file made meanwhile): returns {0, created, skipped, bytes created}.
IMPORT_FILES = f"""
local EXT, SHIFT = {EXT_BASE}, {1 << EXT_CHUNK_BITS}
""" + r"""
local now = ARGV[2]
local plan, chains, need = {}, {}, {}
local add_i, add_b, skipped = 0, 0, 0
for i = 3, #ARGV, 7 do
  local par, name, ino = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local size = tonumber(ARGV[i + 4])
  if chains[par] == nil then
    local pa, err = get_dir(par)
    if err ~= 0 then return {err} end
    if frozen(pa) then return {EROFS} end
    chains[par] = quota_chain(par)
  end
  if redis.call('HEXISTS', dk(par), name) == 1 then
    skipped = skipped + 1
  else
    if redis.call('EXISTS', ik(ino), kk(ino)) > 0 then return {-2} end
    plan[#plan + 1] = i
    add_i, add_b = add_i + 1, add_b + size
    for _, q in ipairs(chains[par]) do
      local n = need[q[1]] or {q[2], 0, 0}
      n[2], n[3] = n[2] + size, n[3] + 1
      need[q[1]] = n
    end
  end
end
local maxi = counter('maxinodes')
if add_i > 0 and maxi > 0 and counter('usedinodes') + add_i > maxi then return {ENOSPC} end
local cap = counter('capacity')
if add_b > 0 and cap > 0 and counter('usedspace') + add_b > cap then return {ENOSPC} end
for qino, n in pairs(need) do
  local err = quota_check({{qino, n[1]}}, n[2], n[3])
  if err ~= 0 then return {err} end
end
-- Checked: from here on nothing fails.
local touched = {}
for _, i in ipairs(plan) do
  local par, name, ino, mtime = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local size, objno = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local a = struct.pack('<I4I4I4I4I8I4', S_IFREG + 420, 0, 0, 1, size, 0) .. mtime .. mtime .. now
    .. p64(tonumber(par))
  redis.call('SET', ik(ino), a)
  redis.call('HSET', dk(par), name, entry(a, ino))
  redis.call('HSET', KEYS[1], ARGV[i + 5], ARGV[i + 6])
  local idx = 0
  while idx * CHUNK < size do
    local len = math.min(CHUNK, size - idx * CHUNK)
    redis.call('RPUSH', ck(ino, idx), struct.pack('<I4I8I4I4I4', 0, EXT + objno * SHIFT + idx, len, 0, len))
    redis.call('SADD', kk(ino), idx)
    idx = idx + 1
  end
  quota_add(chains[par], size, 1)
  touched[par] = true
end
for par in pairs(touched) do redis.call('SET', ik(par), touch(redis.call('GET', ik(par)), now)) end
redis.call('HINCRBY', CK, 'usedinodes', add_i)
redis.call('HINCRBY', CK, 'usedspace', num(add_b))
return {0, #plan, skipped, num(add_b)}
"""

SCRIPTS = ("IMPORT_FILES",)
