"""Lua script of `fusecache import`: files whose data stays in another bucket.

Keys besides those of lua.py:
    {P}ext       hash  registry number -> JSON {src, key, etag, size}: one version of one
                       source object (external.py); its chunks are the external slices
                       layout.external_id(number, chunk)
    {P}extsrc    hash  source number -> JSON {storage, bucket, access_key, secret_key}
    {P}extino    hash  inode -> the registry number it was imported as (dropped when the
                       inode is freed); a file is *unchanged* while its size and chunks are
                       still exactly that object's external slices
    {P}lazy      hash  directory inode -> JSON {src, prefix}: a directory of a lazy import
                       whose entries are listed from the source on first use; its stored
                       mode carries codec.UNFILLED_BIT while the record exists
    {P}importseen:<run>  set  registry numbers an `import --update --delete` run found at
                       the source (runtime; expires after a day)
"""

from __future__ import annotations

from ..layout import EXT_BASE, EXT_CHUNK_BITS

# Lua helpers of both scripts (prefixed to each).
_HELPERS = f"""
local EXT, SHIFT = {EXT_BASE}, {1 << EXT_CHUNK_BITS}
""" + r"""
local function ext_record(size, objno, idx)
  local len = math.min(CHUNK, size - idx * CHUNK)
  return struct.pack('<I4I8I4I4I4', 0, EXT + objno * SHIFT + idx, len, 0, len)
end

-- Whether `ino` (attributes `a`) still holds exactly what it was imported as (registry
-- number `objno`, record `rec`): same size, and every chunk one external slice of it.
local function unchanged(ino, a, objno, rec)
  local size = fsize(a)
  if size ~= tonumber(rec.size) then return false end
  local n = math.ceil(size / CHUNK)
  if redis.call('SCARD', kk(ino)) ~= n then return false end
  for idx = 0, n - 1 do
    local l = redis.call('LRANGE', ck(ino, idx), 0, 1)
    if #l ~= 1 or l[1] ~= ext_record(size, objno, idx) then return false end
  end
  return true
end

-- The registry number and record `ino` was imported as, if it was.
local function origin(ino)
  local objno = redis.call('HGET', XI, ino)
  if not objno then return nil, nil end
  local rec = redis.call('HGET', P .. 'ext', objno)
  if not rec then return nil, nil end
  return tonumber(objno), cjson.decode(rec)
end

local function set_chunks(ino, size, objno)
  local idx = 0
  while idx * CHUNK < size do
    redis.call('RPUSH', ck(ino, idx), ext_record(size, objno, idx))
    redis.call('SADD', kk(ino), idx)
    idx = idx + 1
  end
end
"""

# KEYS: {P}ext, {P}importseen:<run>
# ARGV: P, now, update ('1'/'0'), note seen ('1'/'0'), source number, then per file:
#       parent, name, new inode, mtime (packed), size, registry number, registry record (JSON)
# Creates regular files (mode 0644, owner root) whose chunks are external slices, charging
# their lengths to the volume and to the quotas above. A name already taken is left alone,
# unless `update` is set and it holds this source key's object unchanged in the volume: then
# a new version (another ETag or size) replaces it, as a new inode under the same name.
# Files changed in the volume are kept. With `note seen`, the registry number each listed
# key now stands for is added to KEYS[2] (for --delete).
# Returns {0, created, existing kept, bytes created, unchanged, refreshed, changed kept}.
IMPORT_FILES = _HELPERS + r"""
local now, update, note, src = ARGV[2], ARGV[3] == '1', ARGV[4] == '1', tonumber(ARGV[5])
local plan, chains, need = {}, {}, {}
local add_i, add_b, freed_b = 0, 0, 0
local kept, same, refreshed, changed, new_b, refreshing = 0, 0, 0, 0, 0, 0
local seen = {}
for i = 6, #ARGV, 7 do
  local par, name, ino = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local size, objno = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  if chains[par] == nil then
    local pa, err = get_dir(par)
    if err ~= 0 then return {err} end
    if frozen(pa) then return {EROFS} end
    chains[par] = quota_chain(par)
  end
  local v = redis.call('HGET', dk(par), name)
  local step, delta, chain = nil, 0, chains[par]
  if not v then
    if redis.call('EXISTS', ik(ino), kk(ino)) > 0 then return {-2} end
    step, delta = {'new', i, ino}, size
    seen[#seen + 1] = objno
  elseif update then
    local old = tonumber(string.sub(v, 2))
    local a = redis.call('GET', ik(old))
    local oldno, rec = origin(old)
    local new = cjson.decode(ARGV[i + 6])
    if a and oldno and not frozen(a) and tonumber(rec.src) == src and rec.key == new.key then
      if not unchanged(old, a, oldno, rec) then
        changed = changed + 1
        seen[#seen + 1] = oldno
      elseif rec.etag == new.etag and tonumber(rec.size) == size then
        same = same + 1
        seen[#seen + 1] = oldno
      else
        if redis.call('EXISTS', ik(ino), kk(ino)) > 0 then return {-2} end
        step, delta = {'refresh', i, ino, old, a}, size - fsize(a)
        freed_b = freed_b + fsize(a)
        refreshing = refreshing + 1
        seen[#seen + 1] = objno
      end
    else
      kept = kept + 1
    end
  else
    kept = kept + 1
  end
  if step then
    plan[#plan + 1] = step
    add_b = add_b + size
    add_i = add_i + 1
    for _, q in ipairs(chain) do
      local n = need[q[1]] or {q[2], 0, 0}
      n[2] = n[2] + delta
      if step[1] == 'new' then n[3] = n[3] + 1 end
      need[q[1]] = n
    end
  end
end
local maxi = counter('maxinodes')
local new_i = add_i - refreshing  -- a refreshed file's old inode goes
if new_i > 0 and maxi > 0 and counter('usedinodes') + new_i > maxi then return {ENOSPC} end
local cap = counter('capacity')
if add_b > freed_b and cap > 0 and counter('usedspace') + add_b - freed_b > cap then return {ENOSPC} end
for qino, n in pairs(need) do
  if n[2] > 0 or n[3] > 0 then
    local err = quota_check({{qino, n[1]}}, math.max(n[2], 0), n[3])
    if err ~= 0 then return {err} end
  end
end
-- Checked: from here on nothing fails.
local touched = {}
for _, step in ipairs(plan) do
  local i = step[2]
  local par, name, mtime = ARGV[i], ARGV[i + 1], ARGV[i + 3]
  local size, objno = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local ino = step[3]
  local a = struct.pack('<I4I4I4I4I8I4', S_IFREG + 420, 0, 0, 1, size, 0) .. mtime .. mtime .. now
    .. p64(tonumber(par))
  redis.call('HSET', dk(par), name, entry(a, ino))
  quota_add(chains[par], size, 1)
  touched[par] = true
  if step[1] == 'new' then
    new_b = new_b + size
  else
    -- The new version is a new inode, so a handle open on the old one keeps reading the
    -- old version (or EIO once the source has none of it), never a mix. The old inode
    -- goes as an overwriting rename takes it: kept while open, not to the trash.
    drop_link(step[4], step[5], par, name, now, '')
    refreshed = refreshed + 1
  end
  redis.call('SET', ik(ino), a)
  redis.call('HSET', KEYS[1], ARGV[i + 5], ARGV[i + 6])
  redis.call('HSET', XI, ino, ARGV[i + 5])
  set_chunks(ino, size, objno)
end
for par in pairs(touched) do redis.call('SET', ik(par), touch(redis.call('GET', ik(par)), now)) end
redis.call('HINCRBY', CK, 'usedinodes', add_i)
redis.call('HINCRBY', CK, 'usedspace', num(add_b))
if note and #seen > 0 then
  for s = 1, #seen, 1000 do
    redis.call('SADD', KEYS[2], unpack(seen, s, math.min(s + 999, #seen)))
  end
  redis.call('EXPIRE', KEYS[2], 86400)
end
return {0, #plan - refreshed, kept, num(new_b), same, refreshed, changed}
"""

# KEYS: dk(parent), {P}importseen:<run>  ARGV: P, parent, now, trash hour, source number,
#       then per file: name, inode
# `--delete`: unlink each named file that is still the inode given, was imported from this
# source, is unchanged in the volume, and whose registry number the run did not see at the
# source (its key is gone or holds another version). Other files are left alone.
# Returns {0, deleted, left}.
DELETE_GONE = _HELPERS + r"""
local par, now, hour, src = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local pa, err = get_dir(par)
if err ~= 0 then return {err} end
if frozen(pa) then return {0, 0, (#ARGV - 5) / 2} end
if in_trash(par, pa) then hour = '' end
local deleted, left = 0, 0
for i = 6, #ARGV, 2 do
  local name, ino = ARGV[i], ARGV[i + 1]
  local v = redis.call('HGET', KEYS[1], name)
  local a = v and string.sub(v, 2) == ino and redis.call('GET', ik(ino))
  local objno, rec = nil, nil
  if a then objno, rec = origin(ino) end
  if a and objno and not frozen(a) and tonumber(rec.src) == src and unchanged(ino, a, objno, rec)
      and redis.call('SISMEMBER', KEYS[2], objno) == 0 then
    redis.call('HDEL', KEYS[1], name)
    drop_link(ino, a, par, name, now, hour)
    deleted = deleted + 1
  else
    left = left + 1
  end
end
if deleted > 0 then redis.call('SET', ik(par), touch(pa, now)) end
return {0, deleted, left}
"""

# KEYS: {P}lazy  ARGV: P, directory, record (JSON; '' to clear)
# Marks a directory as a lazy import of `record` (its entries are listed on first use), or,
# with '', as filled: the record goes and the mark leaves its mode. Returns {0}.
MARK_UNFILLED = r"""
local ino = ARGV[2]
local a = redis.call('GET', ik(ino))
if not a then return {ENOENT} end
if not isdir(a) then return {ENOTDIR} end
local mode = u32(a, OFF_MODE)
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ino)
  if bit.band(mode, UNFILLED) ~= 0 then
    redis.call('SET', ik(ino), put(a, OFF_MODE, p32(mode - UNFILLED)))
  end
  return {0}
end
if frozen(a) then return {EROFS} end
redis.call('HSET', KEYS[1], ino, ARGV[3])
if bit.band(mode, UNFILLED) == 0 then
  redis.call('SET', ik(ino), put(a, OFF_MODE, p32(mode + UNFILLED)))
end
return {0}
"""

# KEYS: {P}lazy  ARGV: P, parent, now, then per directory: name, new inode, record (JSON)
# Makes the subdirectories of a lazily imported directory, each marked unfilled with its
# record in one step (a crash never leaves one made but unmarked). A name already taken is
# left alone. Returns {0, made}.
LAZY_DIRS = r"""
local par, now = ARGV[2], ARGV[3]
local pa, err = get_dir(par)
if err ~= 0 then return {err} end
if frozen(pa) then return {EROFS} end
local plan = {}
for i = 4, #ARGV, 3 do
  if redis.call('HEXISTS', dk(par), ARGV[i]) == 0 then
    if redis.call('EXISTS', ik(ARGV[i + 1]), kk(ARGV[i + 1])) > 0 then return {-2} end
    plan[#plan + 1] = i
  end
end
if #plan == 0 then return {0, 0} end
local maxi = counter('maxinodes')
if maxi > 0 and counter('usedinodes') + #plan > maxi then return {ENOSPC} end
local chain = quota_chain(par)
err = quota_check(chain, 0, #plan)
if err ~= 0 then return {err} end
for _, i in ipairs(plan) do
  local ino = ARGV[i + 1]
  local a = struct.pack('<I4I4I4I4I8I4', S_IFDIR + UNFILLED + 493, 0, 0, 2, 4096, 0) .. now .. now .. now
    .. p64(tonumber(par))
  redis.call('SET', ik(ino), a)
  redis.call('HSET', dk(par), ARGV[i], entry(a, ino))
  redis.call('HSET', KEYS[1], ino, ARGV[i + 2])
  pa = add_nlink(pa, 1)
end
redis.call('SET', ik(par), touch(pa, now))
redis.call('HINCRBY', CK, 'usedinodes', #plan)
quota_add(chain, 0, #plan)
return {0, #plan}
"""

SCRIPTS = ("IMPORT_FILES", "DELETE_GONE", "MARK_UNFILLED", "LAZY_DIRS")
