"""Lua scripts of the Redis engine: each multi-key namespace change is one script, so it is
atomic and costs one round trip.

Conventions shared by every script:
- ARGV[1] is the key prefix (the volume's hash tag, e.g. "{fc}"); KEYS[1] is always a key
  of that tag, so Redis Cluster routes the call to the slot that holds every key touched.
- A script returns a table whose first element is 0 on success or a positive errno;
  -1 asks the caller to retry with fresh information (used by rename under quotas), -2
  says the inode number the caller picked is taken (its batch is stale: take a new one).
- A script validates everything before its first write: Lua scripts are not rolled back
  when they return an error, so a failing call must leave Redis untouched.
- Integers handed to redis.call go through num() ('%d'): a raw Lua number could be
  formatted in exponent notation, and timestamps never become Lua numbers at all.
- Shared helpers live in PRELUDE; `script(body)` prepends only the definitions a body uses
  (transitively). Redis runs a script's whole text on every call, and defining all ~40
  helpers each time more than doubled the cost of the hottest script (LOOKUP).

Retries (a reply lost with the connection, a server that stopped answering) must never
apply a change twice or report a wrong error:
- Namespace changes carry an operation token as KEYS[2] (`{P}op<token>`): `replay()`
  returns the recorded result of a call that already ran, and `done()` records a success
  for TOKEN_TTL ms, far longer than any client keeps retrying.
- Slice commits are their own tokens: WRITE ignores a slice id already in the chunk (or
  already dropped from it into the delayed-garbage queue), COMPACT one already at its head.
- Open registrations are sets (idempotent by nature).
"""

from __future__ import annotations

import errno
import re

from ..layout import CHUNK_SIZE, EXT_BASE
from ..types import ROOT_INO, TRASH_INO
from .codec import ATTR_OFFSETS, FROZEN_BIT, MAX_EXACT_SIZE, UNFILLED_BIT

TOKEN_TTL_MS = 120_000

_ERRNOS = ("ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "EINVAL", "ENOSPC", "ENOTEMPTY",
           "EPERM", "EDQUOT", "ENODATA", "EFBIG", "EROFS")

PRELUDE = "\n".join(
    [f"local {name} = {getattr(errno, name)}" for name in _ERRNOS]
    + [f"local OFF_{field.upper()} = {off}" for field, off in ATTR_OFFSETS.items()]
    + [f"local CHUNK = {CHUNK_SIZE}", f"local MAXSIZE = {MAX_EXACT_SIZE}",
       f"local TRASH = {TRASH_INO}", f"local ROOT = {ROOT_INO}", f"local TOKEN_TTL = {TOKEN_TTL_MS}",
       f"local FROZEN = {FROZEN_BIT}", f"local UNFILLED = {UNFILLED_BIT}", f"local EXT_BASE = {EXT_BASE}"]
) + r"""
local P = ARGV[1]
local CK = P .. 'counters'
local QK = P .. 'quota'
local QU = P .. 'qused'
local GK = P .. 'delayed'
local DELK = P .. 'delfiles'
local SK = P .. 'sessions'
local RK = P .. 'sliceref'
local XI = P .. 'extino'
local S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 61440, 16384, 32768, 40960

local function num(v) return string.format('%d', v) end
local function ik(i) return P .. 'i' .. num(i) end
local function dk(i) return P .. 'd' .. num(i) end
local function xk(i) return P .. 'x' .. num(i) end
local function sk(i) return P .. 's' .. num(i) end
local function kk(i) return P .. 'k' .. num(i) end
local function ok(i) return P .. 'o' .. num(i) end
local function ck(i, idx) return P .. 'c' .. num(i) .. '_' .. num(idx) end

local function u32(a, off) return (struct.unpack('<I4', a, off + 1)) end
local function u64(a, off) return (struct.unpack('<I8', a, off + 1)) end
local function put(a, off, b) return string.sub(a, 1, off) .. b .. string.sub(a, off + 1 + #b) end
local function p32(v) return struct.pack('<I4', v) end
local function p64(v) return struct.pack('<I8', v) end
local function ftype(a) return bit.band(u32(a, OFF_MODE), S_IFMT) end
local function isdir(a) return ftype(a) == S_IFDIR end
local function fsize(a) if ftype(a) == S_IFREG then return u64(a, OFF_SIZE) end return 0 end
local function touch(a, now) return put(put(a, OFF_MTIME, now), OFF_CTIME, now) end
local function add_nlink(a, d) return put(a, OFF_NLINK, p32(u32(a, OFF_NLINK) + d)) end
local function entry(a, ino) return string.char(bit.band(bit.rshift(u32(a, OFF_MODE), 12), 15)) .. num(ino) end
-- Part of a read-only snapshot: nothing may change it (EROFS), root included.
local function frozen(a) return bit.band(u32(a, OFF_MODE), FROZEN) ~= 0 end

local function counter(name) return tonumber(redis.call('HGET', CK, name) or '0') end

-- The server's clock in seconds (scores of the sessions and delayed-garbage sets).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- The recorded result of this operation (KEYS[2], its token) if it already ran.
local function replay()
  if KEYS[2] then
    local r = redis.call('GET', KEYS[2])
    if r then return cmsgpack.unpack(r) end
  end
  return nil
end

-- Record a successful result under the operation's token, and return it.
local function done(res)
  if KEYS[2] then redis.call('SET', KEYS[2], cmsgpack.pack(res), 'PX', TOKEN_TTL) end
  return res
end

-- Whether directory `ino` (attributes `a`) is the trash or one of its hour directories.
local function in_trash(ino, a)
  return tonumber(ino) == TRASH or u64(a, OFF_PARENT) == TRASH
end

-- Quota directories at or above directory `start`, nearest first: {ino string, limits}.
-- The trash is outside every quota: the walk stops there.
local function quota_chain(start)
  local out = {}
  if redis.call('HLEN', QK) == 0 then return out end
  local ino = tonumber(start)
  local depth = 0
  while ino and ino > 0 and ino ~= TRASH and depth < 100000 do
    local q = redis.call('HGET', QK, num(ino))
    if q then out[#out + 1] = {num(ino), q} end
    if ino == 1 then break end
    local a = redis.call('GET', ik(ino))
    if not a then break end
    ino = u64(a, OFF_PARENT)
    depth = depth + 1
  end
  return out
end

local function quota_check(chain, db, di)
  for _, q in ipairs(chain) do
    local mb, mi = struct.unpack('<I8I8', q[2])
    if db > 0 and mb > 0 and tonumber(redis.call('HGET', QU, q[1] .. 'b') or '0') + db > mb then
      return EDQUOT
    end
    if di > 0 and mi > 0 and tonumber(redis.call('HGET', QU, q[1] .. 'i') or '0') + di > mi then
      return EDQUOT
    end
  end
  return 0
end

local function quota_add(chain, db, di)
  for _, q in ipairs(chain) do
    if db ~= 0 then redis.call('HINCRBY', QU, q[1] .. 'b', num(db)) end
    if di ~= 0 then redis.call('HINCRBY', QU, q[1] .. 'i', num(di)) end
  end
end

-- Volume capacity and quota checks for `db` more bytes in a file whose parent is `parent`.
local function space_check(parent, db)
  if db <= 0 then return 0, {} end
  local cap = counter('capacity')
  if cap > 0 and counter('usedspace') + db > cap then return ENOSPC, {} end
  local chain = {}
  if parent > 0 then chain = quota_chain(parent) end
  return quota_check(chain, db, 0), chain
end

-- One chunk lets go of the slices of `records` (packed slice records of that chunk; one
-- slice id may appear in several). A slice that clones still share ({P}sliceref counts
-- the chunks beyond the first that hold it) loses one reference; the last holder sends it
-- to the delayed-garbage queue, where its objects wait out the volume's garbage delay: a
-- client may still hold the old slice list for a moment.
local function release_slices(records, now)
  local shared = redis.call('HLEN', RK) > 0
  local fate = {}
  for _, s in ipairs(records) do
    local n = u64(s, 4)
    if n ~= 0 and n < EXT_BASE then  -- imported data has no objects of ours to free
      local id = string.sub(s, 5, 12)
      if fate[id] == nil then
        fate[id] = true
        if shared then
          local refs = tonumber(redis.call('HGET', RK, id) or '0')
          if refs > 1 then
            redis.call('HINCRBY', RK, id, -1)
            fate[id] = false
          elseif refs == 1 then
            redis.call('HDEL', RK, id)
            fate[id] = false
          end
        end
      end
      if fate[id] then redis.call('ZADD', GK, now, string.sub(s, 5, 16)) end
    end
  end
end

-- Release every slice of chunk `idx` of `ino` and drop the chunk.
local function drop_chunk(ino, idx, now)
  local key = ck(ino, idx)
  release_slices(redis.call('LRANGE', key, 0, -1), now)
  redis.call('DEL', key)
  redis.call('SREM', kk(ino), idx)
end

-- Delete an inode whose last link (and last opener) is gone. File data is released
-- lazily: the inode joins the deleted-files set that take_garbage expands chunk by chunk.
-- `uncounted`: not in usedinodes (the trash's hour directories are not the user's).
local function free_inode(ino, a, uncounted)
  local t = ftype(a)
  redis.call('DEL', ik(ino), xk(ino), ok(ino))
  if t == S_IFREG then
    redis.call('HINCRBY', CK, 'usedspace', num(-u64(a, OFF_SIZE)))
    if redis.call('EXISTS', kk(ino)) == 1 then redis.call('SADD', DELK, ino) end
    redis.call('HDEL', XI, ino)  -- an imported file's origin goes with it
  elseif t == S_IFLNK then
    redis.call('DEL', sk(ino))
  elseif t == S_IFDIR then
    redis.call('DEL', dk(ino))
    redis.call('HDEL', P .. 'lazy', ino)  -- a lazy import's directory, never listed
    redis.call('HDEL', QK, ino)
    redis.call('HDEL', QU, ino .. 'b', ino .. 'i')
  end
  if not uncounted then redis.call('HINCRBY', CK, 'usedinodes', -1) end
end

-- Whether a live session (one still in the sessions set) holds `ino` open.
local function openers_alive(ino)
  for _, sid in ipairs(redis.call('HKEYS', ok(ino))) do
    if redis.call('ZSCORE', SK, sid) then return true end
  end
  return false
end

-- Free `ino` if it has no link, is not in the trash (parent 0) and no live session holds
-- it open. Returns 1 when freed.
local function free_if_unheld(ino)
  local a = redis.call('GET', ik(ino))
  if not a or u32(a, OFF_NLINK) ~= 0 or u64(a, OFF_PARENT) ~= 0 then return 0 end
  if openers_alive(ino) then return 0 end
  free_inode(ino, a)
  return 1
end

-- The trash directory, made on first use on a volume formatted before trash existed.
local function ensure_trash(now)
  local a = redis.call('GET', ik(TRASH))
  if a then return a end
  a = struct.pack('<I4I4I4I4I8I4', S_IFDIR + 448, 0, 0, 2, 4096, 0) .. now .. now .. now .. p64(ROOT)
  redis.call('SET', ik(TRASH), a)
  return a
end

-- The inode of the trash's directory for hour `hour` (made if missing).
local function trash_dir(hour, now)
  local v = redis.call('HGET', dk(TRASH), hour)
  if v then return tonumber(string.sub(v, 2)) end
  local ta = ensure_trash(now)
  local ino = redis.call('HINCRBY', CK, 'nextinode', 1)
  while redis.call('EXISTS', ik(ino), kk(ino)) > 0 do  -- a counter behind its inodes
    ino = redis.call('HINCRBY', CK, 'nextinode', 1)
  end
  local a = struct.pack('<I4I4I4I4I8I4', S_IFDIR + 448, 0, 0, 2, 4096, 0) .. now .. now .. now .. p64(TRASH)
  redis.call('SET', ik(ino), a)
  redis.call('HSET', dk(TRASH), hour, entry(a, ino))
  redis.call('SET', ik(TRASH), add_nlink(touch(ta, now), 1))
  return ino
end

-- Remove the link `name` of non-directory `ino` (attributes `a`) from directory `dir`
-- (the entry itself is the caller's to delete). When it was the last link the inode goes
-- to the trash's directory `hour` (unless `hour` is '', the trash is off); else it is kept
-- with nlink 0 while any live session holds it open, and freed otherwise. Returns 0 (links
-- remain), 1 (kept for its openers), 2 (freed) or 3 (trashed).
local function drop_link(ino, a, dir, name, now, hour)
  local n = u32(a, OFF_NLINK)
  local parent = u64(a, OFF_PARENT)
  a = put(a, OFF_CTIME, now)
  if n > 1 then
    if parent == tonumber(dir) then
      -- The link that quota usage was attributed to goes; the others are not tracked.
      quota_add(quota_chain(dir), -fsize(a), -1)
      a = put(a, OFF_PARENT, p64(0))
    end
    redis.call('SET', ik(ino), put(a, OFF_NLINK, p32(n - 1)))
    return 0
  end
  -- n == 0: an entry of the trash (whose usage already left every quota).
  if parent ~= 0 and n > 0 then quota_add(quota_chain(parent), -fsize(a), -1) end
  a = put(a, OFF_NLINK, p32(0))
  if hour ~= '' and n > 0 then
    local hd = trash_dir(hour, now)
    redis.call('SET', ik(ino), put(a, OFF_PARENT, p64(hd)))
    redis.call('HSET', dk(hd), string.sub(num(dir) .. '-' .. num(ino) .. '-' .. name, 1, 255), entry(a, ino))
    return 3
  end
  a = put(a, OFF_PARENT, p64(0))
  if openers_alive(ino) then
    redis.call('SET', ik(ino), a)
    return 1
  end
  free_inode(ino, a)
  return 2
end

-- Whether directory `root` is `start` or one of its ancestors.
local function in_subtree(start, root)
  local ino = tonumber(start)
  root = tonumber(root)
  local depth = 0
  while ino and depth < 100000 do
    if ino == root then return true end
    if ino == 1 then return false end
    local a = redis.call('GET', ik(ino))
    if not a then return false end
    ino = u64(a, OFF_PARENT)
    depth = depth + 1
  end
  return false
end

-- The attributes of directory `ino`: ENOENT / ENOTDIR when it is not one.
local function get_dir(ino)
  local a = redis.call('GET', ik(ino))
  if not a then return nil, ENOENT end
  if not isdir(a) then return nil, ENOTDIR end
  return a, 0
end

-- Register that session `sid` holds `ino` open ('0': no session, nothing to note).
local function hold(ino, sid)
  if sid == '0' then return end
  redis.call('HSET', ok(ino), sid, 1)
  redis.call('SADD', P .. 'open' .. sid, ino)
end
"""

# KEYS: dir(parent)  ARGV: P, parent, name
LOOKUP = r"""
local v = redis.call('HGET', KEYS[1], ARGV[3])
if not v then
  local pa, err = get_dir(ARGV[2])
  if err ~= 0 then return {err} end
  -- A lazy import's directory not listed yet: the caller may list it and look again.
  if bit.band(u32(pa, OFF_MODE), UNFILLED) ~= 0 then return {-3} end
  return {ENOENT}
end
local ino = string.sub(v, 2)
local a = redis.call('GET', P .. 'i' .. ino)
if not a then return {ENOENT} end
return {0, ino, a}
"""

# KEYS: dir(parent), op token
# ARGV: P, parent, name, ino, attr, entry, now, symlink target, sid holding it open ('0': none)
CREATE = r"""
local r = replay()
if r then return r end
local pa, err = get_dir(ARGV[2])
if err ~= 0 then return {err} end
if in_trash(ARGV[2], pa) then return {EPERM} end
if frozen(pa) then return {EROFS} end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return {EEXIST} end
-- The number must be free: no inode, and no data left of a deleted one awaiting cleanup.
if redis.call('EXISTS', P .. 'i' .. ARGV[4], P .. 'k' .. ARGV[4]) > 0 then return {-2} end
local maxi = counter('maxinodes')
if maxi > 0 and counter('usedinodes') + 1 > maxi then return {ENOSPC} end
local chain = quota_chain(ARGV[2])
err = quota_check(chain, 0, 1)
if err ~= 0 then return {err} end
local a = ARGV[5]
redis.call('SET', P .. 'i' .. ARGV[4], a)
redis.call('HSET', KEYS[1], ARGV[3], ARGV[6])
if ARGV[8] ~= '' then redis.call('SET', P .. 's' .. ARGV[4], ARGV[8]) end
local before = pa
pa = touch(pa, ARGV[7])
if isdir(a) then pa = add_nlink(pa, 1) end
redis.call('SET', ik(ARGV[2]), pa)
redis.call('HINCRBY', CK, 'usedinodes', 1)
quota_add(chain, 0, 1)
if ftype(a) == S_IFREG then hold(ARGV[4], ARGV[9]) end
-- The parent's attributes before and after this change: a client that knew the former
-- knows the directory changed by this create alone (fuse/kernel_cache.py).
return done({0, before, pa})
"""

# KEYS: dir(parent), op token  ARGV: P, parent, name, now, trash hour ('': trash off)
UNLINK = r"""
local r = replay()
if r then return r end
local pa, err = get_dir(ARGV[2])
if err ~= 0 then return {err} end
local v = redis.call('HGET', KEYS[1], ARGV[3])
if not v then return {ENOENT} end
local ino = string.sub(v, 2)
local a = redis.call('GET', P .. 'i' .. ino)
if a and isdir(a) then return {EISDIR} end
if frozen(pa) or (a and frozen(a)) then return {EROFS} end
local hour = ARGV[5]
if in_trash(ARGV[2], pa) then hour = '' end  -- deleting from the trash deletes for good
redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('SET', ik(ARGV[2]), touch(pa, ARGV[4]))
local fate = 2
if a then fate = drop_link(ino, a, ARGV[2], ARGV[3], ARGV[4], hour) end
return done({0, ino, fate})
"""

# KEYS: dir(parent), op token  ARGV: P, parent, name, now
RMDIR = r"""
local r = replay()
if r then return r end
local pa, err = get_dir(ARGV[2])
if err ~= 0 then return {err} end
local v = redis.call('HGET', KEYS[1], ARGV[3])
if not v then return {ENOENT} end
local ino = string.sub(v, 2)
local a = redis.call('GET', P .. 'i' .. ino)
if a and not isdir(a) then return {ENOTDIR} end
if frozen(pa) or (a and frozen(a)) then return {EROFS} end
if redis.call('HLEN', P .. 'd' .. ino) > 0 then return {ENOTEMPTY} end
redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('SET', ik(ARGV[2]), add_nlink(touch(pa, ARGV[4]), -1))
if a then
  quota_add(quota_chain(ARGV[2]), 0, -1)
  free_inode(ino, a, tonumber(ARGV[2]) == TRASH)
end
return done({0})
"""

# KEYS: dir(new parent), op token  ARGV: P, ino, new parent, name, now
LINK = r"""
local r = replay()
if r then return r end
local a = redis.call('GET', ik(ARGV[2]))
if not a then return {ENOENT} end
if isdir(a) then return {EPERM} end
if u32(a, OFF_NLINK) == 0 then return {ENOENT} end
local pa, err = get_dir(ARGV[3])
if err ~= 0 then return {err} end
if in_trash(ARGV[3], pa) then return {EPERM} end
if frozen(a) or frozen(pa) then return {EROFS} end
if redis.call('HEXISTS', KEYS[1], ARGV[4]) == 1 then return {EEXIST} end
redis.call('HSET', KEYS[1], ARGV[4], entry(a, ARGV[2]))
a = put(add_nlink(a, 1), OFF_CTIME, ARGV[5])
redis.call('SET', ik(ARGV[2]), a)
redis.call('SET', ik(ARGV[3]), touch(pa, ARGV[5]))
return done({0, a})
"""

# KEYS: dir(src parent), op token
# ARGV: P, src parent, src name, dst parent, dst name, flags, now, trash hour ('': off),
#       quota_ok ('1' once the caller measured what moves), src ino, dst ino,
#       src bytes, src inodes, dst bytes, dst inodes (usage moving with each side)
RENAME = r"""
local r = replay()
if r then return r end
local sp, sname, dp, dname = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local flags, now, hour = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local NOREPLACE, EXCHANGE = 1, 2
local dirs = {}
local err
dirs[sp], err = get_dir(sp)
if err ~= 0 then return {err} end
if dp ~= sp then
  dirs[dp], err = get_dir(dp)
  if err ~= 0 then return {err} end
end
-- Nothing moves into the trash by rename; files leave it (a restore) one way only.
if in_trash(dp, dirs[dp]) or tonumber(sp) == TRASH then return {EPERM} end
local restore = in_trash(sp, dirs[sp])
if restore and flags == EXCHANGE then return {EPERM} end
local sv = redis.call('HGET', KEYS[1], sname)
if not sv then return {ENOENT} end
local sino = string.sub(sv, 2)
local sa = redis.call('GET', ik(sino))
if not sa then return {ENOENT} end
local dv = redis.call('HGET', dk(dp), dname)
local dino = ''
if dv then dino = string.sub(dv, 2) end
if dv then
  if flags == NOREPLACE then return {EEXIST} end
  if dino == sino then return done({0, '', 0}) end
elseif flags == EXCHANGE then
  return {ENOENT}
end
local da = nil
if dv then da = redis.call('GET', ik(dino)) end
if frozen(dirs[sp]) or frozen(dirs[dp]) or frozen(sa) or (da and frozen(da)) then return {EROFS} end
local sdir = isdir(sa)
local ddir = da ~= nil and isdir(da)
if dp ~= sp then
  if sdir and in_subtree(dp, sino) then return {EINVAL} end
  if flags == EXCHANGE and ddir and in_subtree(sp, dino) then return {EINVAL} end
end
if dv and flags ~= EXCHANGE and da then
  if sdir then
    if not ddir then return {ENOTDIR} end
    if redis.call('HLEN', dk(dino)) > 0 then return {ENOTEMPTY} end
  elseif ddir then
    return {EISDIR}
  end
end

-- Quota usage follows an inode whose attributed parent changes.
local smoves = dp ~= sp and (sdir or u64(sa, OFF_PARENT) == tonumber(sp))
local dmoves = flags == EXCHANGE and dp ~= sp and da ~= nil
  and (ddir or u64(da, OFF_PARENT) == tonumber(dp))
local gain, lose = {}, {}
if (smoves or dmoves) and redis.call('HLEN', QK) > 0 then
  if ARGV[9] ~= '1' or ARGV[10] ~= sino or ARGV[11] ~= dino then return {-1} end
  local a_chain, b_chain = quota_chain(sp), quota_chain(dp)
  local in_a, in_b = {}, {}
  for _, q in ipairs(a_chain) do in_a[q[1]] = true end
  for _, q in ipairs(b_chain) do in_b[q[1]] = true end
  for _, q in ipairs(b_chain) do if not in_a[q[1]] then gain[#gain + 1] = q end end
  for _, q in ipairs(a_chain) do if not in_b[q[1]] then lose[#lose + 1] = q end end
  local mb, mi = 0, 0
  if smoves then mb, mi = tonumber(ARGV[12]), tonumber(ARGV[13]) end
  if dmoves then mb, mi = mb - tonumber(ARGV[14]), mi - tonumber(ARGV[15]) end
  err = quota_check(gain, mb, mi)
  if err ~= 0 then return {err} end
  quota_add(gain, mb, mi)
  quota_add(lose, -mb, -mi)
end

-- All checks passed: from here on nothing fails.
local freed = ''
local fate = 0
if flags == EXCHANGE then
  redis.call('HSET', KEYS[1], sname, dv)
  redis.call('HSET', dk(dp), dname, sv)
  if dp ~= sp then
    if sdir and not ddir then
      dirs[sp] = add_nlink(dirs[sp], -1)
      dirs[dp] = add_nlink(dirs[dp], 1)
    elseif ddir and not sdir then
      dirs[sp] = add_nlink(dirs[sp], 1)
      dirs[dp] = add_nlink(dirs[dp], -1)
    end
    if smoves then sa = put(sa, OFF_PARENT, p64(tonumber(dp))) end
    if dmoves then da = put(da, OFF_PARENT, p64(tonumber(sp))) end
  end
  if da then redis.call('SET', ik(dino), put(da, OFF_CTIME, now)) end
else
  if dv and da then
    if ddir then
      dirs[dp] = add_nlink(dirs[dp], -1)
      quota_add(quota_chain(dp), 0, -1)
      free_inode(dino, da)
      fate = 2
    else
      fate = drop_link(dino, da, dp, dname, now, hour)
    end
    freed = dino
  end
  redis.call('HDEL', KEYS[1], sname)
  redis.call('HSET', dk(dp), dname, sv)
  if dp ~= sp then
    if sdir then
      dirs[sp] = add_nlink(dirs[sp], -1)
      dirs[dp] = add_nlink(dirs[dp], 1)
    end
    if smoves then sa = put(sa, OFF_PARENT, p64(tonumber(dp))) end
  end
  -- A file restored from the trash has its one link again.
  if restore and not sdir and u32(sa, OFF_NLINK) == 0 then sa = put(sa, OFF_NLINK, p32(1)) end
end
redis.call('SET', ik(sino), put(sa, OFF_CTIME, now))
for d, a in pairs(dirs) do redis.call('SET', ik(d), touch(a, now)) end
return done({0, freed, fate})
"""

# KEYS: attr(ino), op token
# ARGV: P, ino, mask, mode, uid, gid, atime, mtime, now, size
# mask bits: 1 mode, 2 uid, 4 gid, 8 atime, 16 mtime, 32 size
SETATTR = r"""
local r = replay()
if r then return r end
local ino, mask, now = ARGV[2], tonumber(ARGV[3]), ARGV[9]
local a = redis.call('GET', KEYS[1])
if not a then return {ENOENT} end
if frozen(a) then return {EROFS} end
local function has(b) return bit.band(mask, b) ~= 0 end
local old, new, chain = 0, 0, {}
if has(32) then
  local t = ftype(a)
  if t == S_IFDIR then return {EISDIR} end
  if t ~= S_IFREG then return {EINVAL} end
  old, new = u64(a, OFF_SIZE), tonumber(ARGV[10])
  if new > MAXSIZE then return {EFBIG} end
  local err
  err, chain = space_check(u64(a, OFF_PARENT), new - old)
  if err ~= 0 then return {err} end
end
if has(1) then
  -- chmod keeps the type, and a lazy directory's mark (UNFILLED)
  local mode = bit.bor(bit.band(u32(a, OFF_MODE), S_IFMT + UNFILLED), bit.band(tonumber(ARGV[4]), 4095))
  a = put(a, OFF_MODE, p32(mode))
end
if has(2) then a = put(a, OFF_UID, p32(tonumber(ARGV[5]))) end
if has(4) then a = put(a, OFF_GID, p32(tonumber(ARGV[6]))) end
if has(8) then a = put(a, OFF_ATIME, ARGV[7]) end
if has(16) then a = put(a, OFF_MTIME, ARGV[8]) end
if has(32) then
  if not has(16) then a = put(a, OFF_MTIME, now) end
  if new < old then
    local parent = u64(a, OFF_PARENT)
    if parent > 0 then quota_add(quota_chain(parent), new - old, 0) end
    -- Whole chunks past the end go to garbage ...
    local first_gone = math.ceil(new / CHUNK)
    local t = clock()
    for _, idx in ipairs(redis.call('SMEMBERS', kk(ino))) do
      if tonumber(idx) >= first_gone then drop_chunk(ino, idx, t) end
    end
    -- ... and a hole hides the tail of the last partial chunk, so that growing the file
    -- again reads zeros there.
    local pos = new % CHUNK
    local last = ck(ino, math.floor(new / CHUNK))
    if pos ~= 0 and redis.call('EXISTS', last) == 1 then
      redis.call('RPUSH', last, struct.pack('<I4I8I4I4I4', pos, 0, CHUNK - pos, 0, CHUNK - pos))
    end
  elseif new > old then
    quota_add(chain, new - old, 0)
  end
  redis.call('HINCRBY', CK, 'usedspace', num(new - old))
  a = put(a, OFF_SIZE, p64(new))
end
a = put(a, OFF_CTIME, now)
redis.call('SET', KEYS[1], a)
return done({0, a})
"""

# KEYS: chunk(ino, idx)  ARGV: P, ino, idx, packed slice, mtime, file end covered by the slice
# The same slice record already in the chunk, or its slice already dropped from it, was
# committed by an earlier attempt of this same call (its reply was lost): nothing changes,
# and that is success. Replies {0, attributes after, repeated?, attributes before (if not)}.
WRITE = r"""
local ino = ARGV[2]
local a = redis.call('GET', ik(ino))
if not a then return {ENOENT} end
local before = a
local t = ftype(a)
if t == S_IFDIR then return {EISDIR} end
if t ~= S_IFREG then return {EINVAL} end
if frozen(a) then return {EROFS} end
for _, s in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if s == ARGV[4] then return {0, a, 1} end
end
if redis.call('ZSCORE', GK, string.sub(ARGV[4], 5, 16)) then return {0, a, 1} end
local old, new = u64(a, OFF_SIZE), tonumber(ARGV[6])
if new > old then
  if new > MAXSIZE then return {EFBIG} end
  local err, chain = space_check(u64(a, OFF_PARENT), new - old)
  if err ~= 0 then return {err} end
  quota_add(chain, new - old, 0)
  redis.call('HINCRBY', CK, 'usedspace', num(new - old))
  a = put(a, OFF_SIZE, p64(new))
end
redis.call('RPUSH', KEYS[1], ARGV[4])
redis.call('SADD', kk(ino), ARGV[3])
a = put(put(a, OFF_MTIME, ARGV[5]), OFF_CTIME, ARGV[5])
redis.call('SET', ik(ino), a)
return {0, a, 0, before}
"""

# KEYS: chunk(ino, idx)  ARGV: P, count of old slices, new slice, old slices...
COMPACT = r"""
if redis.call('LINDEX', KEYS[1], 0) == ARGV[3] then return {0, 1} end  -- an earlier attempt did it
local n = tonumber(ARGV[2])
local cur = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #cur < n then return {0, 0} end
for i = 1, n do
  if cur[i] ~= ARGV[3 + i] then return {0, 0} end
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('LPUSH', KEYS[1], ARGV[3])
local keep = {}
for _, s in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do keep[string.sub(s, 5, 12)] = true end
local gone = {}
for i = 1, n do
  if not keep[string.sub(cur[i], 5, 12)] then gone[#gone + 1] = cur[i] end
end
release_slices(gone, clock())
return {0, 1}
"""

# KEYS: delayed garbage  ARGV: P, limit, chunk budget, delay (s), lease (s)
# Expands deleted files into garbage slices (a bounded number of chunks per call) when few
# items are pending, then claims up to `limit` items queued more than `delay` seconds ago:
# a claimed item is hidden from other callers for `lease` seconds, until ack_garbage
# removes it (a caller that dies lets it reappear).
TAKE_GARBAGE = r"""
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local delay, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local legacy = P .. 'garbage'  -- the undelayed set of earlier versions
if redis.call('EXISTS', legacy) == 1 then
  for _, m in ipairs(redis.call('SMEMBERS', legacy)) do redis.call('ZADD', GK, now, m) end
  redis.call('DEL', legacy)
end
local expanded = 0
if redis.call('ZCARD', GK) < limit then
  for _, ino in ipairs(redis.call('SRANDMEMBER', DELK, 64)) do
    for _, idx in ipairs(redis.call('SRANDMEMBER', kk(ino), budget - expanded)) do
      drop_chunk(ino, idx, now)
      expanded = expanded + 1
    end
    if redis.call('EXISTS', kk(ino)) == 0 then redis.call('SREM', DELK, ino) end
    if expanded >= budget then break end
  end
end
local items = redis.call('ZRANGEBYSCORE', GK, '-inf', now - delay, 'LIMIT', 0, limit)
for _, m in ipairs(items) do redis.call('ZADD', GK, now - delay + lease, m) end
-- How many chunks were expanded: progress even when they queued nothing (shared slices).
return {0, items, expanded}
"""

# KEYS: delayed garbage  ARGV: P, items...
ACK_GARBAGE = r"""
for i = 2, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
return {0}
"""

# KEYS: xattrs(ino), op token  ARGV: P, ino, name, value, flags, now
SETXATTR = r"""
local r = replay()
if r then return r end
local a = redis.call('GET', ik(ARGV[2]))
if not a then return {ENOENT} end
if frozen(a) then return {EROFS} end
local flags = tonumber(ARGV[5])
local exists = redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1
if flags == 1 and exists then return {EEXIST} end
if flags == 2 and not exists then return {ENODATA} end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('SET', ik(ARGV[2]), put(a, OFF_CTIME, ARGV[6]))
return done({0})
"""

# KEYS: xattrs(ino), op token  ARGV: P, ino, name, now
REMOVEXATTR = r"""
local r = replay()
if r then return r end
local a = redis.call('GET', ik(ARGV[2]))
if not a then return {ENOENT} end
if frozen(a) then return {EROFS} end
if redis.call('HDEL', KEYS[1], ARGV[3]) == 0 then return {ENODATA} end
redis.call('SET', ik(ARGV[2]), put(a, OFF_CTIME, ARGV[4]))
return done({0})
"""

# KEYS: attr(ino) [, chunk(ino, 0)]  ARGV: P, ino, sid ('0': no session), hold ('0': no note)
# Attributes, and (with a session) the note that the session holds the inode open, in one
# step: an unlink by any client either ran before (ENOENT here) or sees the note. With the
# chunk key, also the first chunk's slices: a small file's open and read cost one round trip.
OPEN = r"""
local a = redis.call('GET', KEYS[1])
if not a then return {ENOENT} end
if ARGV[4] ~= '0' then hold(ARGV[2], ARGV[3]) end
if KEYS[2] then return {0, a, redis.call('LRANGE', KEYS[2], 0, -1)} end
return {0, a}
"""

# KEYS: open(sid)  ARGV: P, sid, inodes...
# The session closed these inodes; those that lost their last link meanwhile, and that no
# other live session holds, are freed.
RELEASE = r"""
local freed = 0
for i = 3, #ARGV do
  redis.call('HDEL', ok(ARGV[i]), ARGV[2])
  redis.call('SREM', KEYS[1], ARGV[i])
  freed = freed + free_if_unheld(ARGV[i])
end
return {0, freed}
"""

# KEYS: open(sid)  ARGV: P, sid, inodes...  (a session found cleaned notes its opens again)
REGISTER = r"""
for i = 3, #ARGV do
  if redis.call('EXISTS', ik(ARGV[i])) == 1 then hold(ARGV[i], ARGV[2]) end
end
return {0}
"""

# KEYS: sessions  ARGV: P, info (JSON without sid/started), sid to revive ('' for a new one)
NEW_SESSION = r"""
local sid = ARGV[3]
if sid == '' then sid = redis.call('HINCRBY', CK, 'nextsession', 1) end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('ZADD', KEYS[1], now, sid)
redis.call('HSET', P .. 'sessinfo', sid, now .. ' ' .. ARGV[2])
-- Every slice id this session will hand out is above the counter now (see HEARTBEAT).
if ARGV[3] == '' then redis.call('HSET', P .. 'inuse', sid, counter('nextslice') + 1) end
return {0, sid}
"""

# KEYS: sessions  ARGV: P, sid, lowest slice id the session may still commit ('': unknown)
# `fusecache gc` never deletes objects of slice ids at or above a live session's mark: they
# may belong to a slice being written (its blocks stored, its commit to come).
HEARTBEAT = r"""
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {0, 0} end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] .. '.' .. string.format('%06d', tonumber(t[2])), ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', P .. 'inuse', ARGV[2], ARGV[3]) end
-- The settings ride along: `fusecache config` changes reach live clients within a beat.
return {0, 1, redis.call('GET', P .. 'setting')}
"""

# KEYS: sessions  ARGV: P, max age in seconds
STALE_SESSIONS = r"""
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) + tonumber(t[2]) / 1e6 - tonumber(ARGV[2])
return {0, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)}
"""

# KEYS: sessions  ARGV: P, sid
# The session's open notes go; inodes only it kept alive are freed.
CLOSE_SESSION = r"""
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', P .. 'sessinfo', ARGV[2])
redis.call('HDEL', P .. 'inuse', ARGV[2])
local freed = 0
local held = P .. 'open' .. ARGV[2]
for _, ino in ipairs(redis.call('SMEMBERS', held)) do
  redis.call('HDEL', ok(ino), ARGV[2])
  freed = freed + free_if_unheld(ino)
end
redis.call('DEL', held)
local legacy = P .. 'sustained' .. ARGV[2]  -- kept inodes of earlier versions
for _, ino in ipairs(redis.call('SMEMBERS', legacy)) do
  local a = redis.call('GET', ik(ino))
  if a and u32(a, OFF_NLINK) == 0 then
    a = put(a, OFF_PARENT, p64(0))
    redis.call('SET', ik(ino), a)
    freed = freed + free_if_unheld(ino)
  end
end
redis.call('DEL', legacy)
return {0, freed}
"""

# KEYS: counters  ARGV: P, ino
STATFS = r"""
local c = redis.call('HMGET', CK, 'capacity', 'maxinodes', 'usedspace', 'usedinodes')
local q = {}
if redis.call('HLEN', QK) > 0 then
  local start = ARGV[2]
  local a = redis.call('GET', ik(start))
  if a and not isdir(a) then start = u64(a, OFF_PARENT) end
  local chain = quota_chain(start)
  if #chain > 0 then
    local ino = chain[1][1]
    q = {chain[1][2], redis.call('HGET', QU, ino .. 'b') or '0', redis.call('HGET', QU, ino .. 'i') or '0'}
  end
end
return {0, c, q}
"""

# KEYS: quota  ARGV: P, ino, limits, used bytes, used inodes
SET_QUOTA = r"""
local a, err = get_dir(ARGV[2])
if err ~= 0 then return {err} end
redis.call('HSET', QK, ARGV[2], ARGV[3])
redis.call('HSET', QU, ARGV[2] .. 'b', ARGV[4], ARGV[2] .. 'i', ARGV[5])
return {0}
"""

# KEYS: setting  ARGV: P, settings JSON, capacity, max inodes, root attr, force ('1'/'0'), now
FORMAT = r"""
if redis.call('EXISTS', KEYS[1]) == 1 and ARGV[6] ~= '1' then return {EEXIST} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', CK, 'capacity', ARGV[3], 'maxinodes', ARGV[4])
if redis.call('EXISTS', ik(1)) == 0 then
  redis.call('SET', ik(1), ARGV[5])
  redis.call('HSETNX', CK, 'nextinode', 1)
  redis.call('HSETNX', CK, 'nextslice', 0)
  redis.call('HSETNX', CK, 'nextsession', 0)
  redis.call('HSETNX', CK, 'usedspace', 0)
  redis.call('HSETNX', CK, 'usedinodes', 0)
end
ensure_trash(ARGV[7])
return {0}
"""


_DEFINED = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_, ]*?)\s*(?:=|\()")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _definitions(prelude: str) -> list[tuple[frozenset[str], str]]:
    """PRELUDE as (names defined, text) pieces in order. A piece starts at a column-0
    `local`; comment lines belong to the piece after them."""
    pieces: list[tuple[frozenset[str], str]] = []
    pending: list[str] = []
    for line in prelude.splitlines():
        match = _DEFINED.match(line)
        if match:
            names = frozenset(n.strip() for n in match.group(1).split(","))
            pieces.append((names, "\n".join([*pending, line])))
            pending = []
        elif line.startswith("--") or not pieces:
            pending.append(line)
        else:
            names, text = pieces[-1]
            pieces[-1] = (names, text + "\n" + line)
    return pieces


_PIECES = _definitions(PRELUDE)


def script(body: str) -> str:
    """`body` with the PRELUDE definitions it needs, directly or through other helpers."""
    needed: set[str] = set()
    frontier = set(_WORD.findall(body))
    while frontier:
        word = frontier.pop()
        for names, text in _PIECES:
            if word in names and not names <= needed:
                needed |= names
                frontier |= set(_WORD.findall(text)) - needed
    return "\n".join(text for names, text in _PIECES if names & needed) + "\n" + body
