"""Lua scripts of whole-tree operations: clones (metadata copy-on-write) and the removal of
trees that nobody may change through a mount (read-only snapshots).

A clone is built *detached*: its root has parent 0 and sits in {P}detached (root inode ->
JSON record naming the clone and the session that builds it) until CLONE_ATTACH links it
under its name in one step. So a clone is either whole and visible or not visible at all;
one whose builder died is found by fsck (and by a rerun of the same clone, which resumes
it) through {P}detached.

Shared data: the new inodes' chunk lists hold the same slice records as the source's, and
{P}sliceref counts, per slice id, the chunks beyond the first that hold it. lua.PRELUDE's
release_slices decrements it; only the last holder queues the slice's objects as garbage.

Keys besides those of lua.py:
    {P}detached        hash  detached root -> JSON record (see clone.py)
    {P}detuse          hash  "<root>b" / "<root>i": bytes and inodes of a detached tree,
                             charged to the quotas above its destination when it attaches
    {P}detmap<root>    hash  source inode -> clone inode, for files with several links
"""

from __future__ import annotations

_LOCALS = r"""
local TK = P .. 'detached'
local UK = P .. 'detuse'
"""

# Copy inode `src` (attributes `a`) as `dst` in directory `parent` (0: detached), sharing
# its data: each slice its chunks hold gains a reference. The copy keeps mode, owner, times
# and xattrs; ctime is `now`; `ro` freezes it. Returns the new attributes.
_COPY = r"""
local function copy_inode(src, a, dst, parent, now, ro)
  local t = ftype(a)
  local mode = bit.band(u32(a, OFF_MODE), FROZEN - 1)
  if ro then mode = bit.bor(mode, FROZEN) end
  local na = put(put(put(a, OFF_MODE, p32(mode)), OFF_CTIME, now), OFF_PARENT, p64(tonumber(parent)))
  if t == S_IFDIR then na = put(na, OFF_NLINK, p32(2)) else na = put(na, OFF_NLINK, p32(1)) end
  redis.call('SET', ik(dst), na)
  local xs = redis.call('HGETALL', xk(src))
  for i = 1, #xs, 2 do redis.call('HSET', xk(dst), xs[i], xs[i + 1]) end
  if t == S_IFLNK then
    local target = redis.call('GET', sk(src))
    if target then redis.call('SET', sk(dst), target) end
  elseif t == S_IFREG then
    for _, idx in ipairs(redis.call('SMEMBERS', kk(src))) do
      local recs = redis.call('LRANGE', ck(src, idx), 0, -1)
      if #recs > 0 then
        local seen = {}
        for _, s in ipairs(recs) do
          local id = string.sub(s, 5, 12)
          if u64(s, 4) ~= 0 and u64(s, 4) < EXT_BASE and not seen[id] then  -- imported data: not counted
            seen[id] = true
            redis.call('HINCRBY', RK, id, 1)
          end
        end
        for i = 1, #recs, 500 do
          redis.call('RPUSH', ck(dst, idx), unpack(recs, i, math.min(i + 499, #recs)))
        end
        redis.call('SADD', kk(dst), idx)
      end
    end
  end
  return na
end
"""

# Room in the volume for `inodes` more inodes and `bytes` more bytes.
_ROOM = r"""
local function room(inodes, bytes)
  local maxi = counter('maxinodes')
  if inodes > 0 and maxi > 0 and counter('usedinodes') + inodes > maxi then return ENOSPC end
  local cap = counter('capacity')
  if bytes > 0 and cap > 0 and counter('usedspace') + bytes > cap then return ENOSPC end
  return 0
end
"""

# KEYS: detached  ARGV: P, src ino, new root ino, now, record JSON, read-only ('1'/'0'),
#       root of an abandoned clone to take over ('': a new clone)
# Starts a clone: copies the source's root inode, detached. A retry of a call whose reply
# was lost finds its own record (the JSON carries a fresh token) and changes nothing.
CLONE_BEGIN = _LOCALS + _COPY + _ROOM + r"""
local src, dst, now, rec = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ARGV[7] ~= '' then
  if redis.call('HEXISTS', KEYS[1], ARGV[7]) == 0 then return {ENOENT} end
  redis.call('HSET', KEYS[1], ARGV[7], rec)
  return {0, ARGV[7], redis.call('GET', ik(ARGV[7]))}
end
if redis.call('HGET', KEYS[1], dst) == rec then return {0, dst, redis.call('GET', ik(dst))} end
local a = redis.call('GET', ik(src))
if not a then return {ENOENT} end
if redis.call('EXISTS', ik(dst), kk(dst)) > 0 then return {-2} end
local size = fsize(a)
local err = room(1, size)
if err ~= 0 then return {err} end
local na = copy_inode(src, a, dst, 0, now, ARGV[6] == '1')
redis.call('HINCRBY', CK, 'usedinodes', 1)
redis.call('HINCRBY', CK, 'usedspace', num(size))
redis.call('HSET', KEYS[1], dst, rec)
redis.call('HSET', UK, dst .. 'b', num(size), dst .. 'i', 1)
return {0, dst, na}
"""

# KEYS: detached  ARGV: P, root, now, read-only ('1'/'0'), then per entry: source inode,
#       clone directory, name, new inode
# Copies entries into directories of the detached clone `root`. An entry whose name is
# already there was copied by an earlier attempt (a lost reply, or a resumed clone) and is
# kept; a source inode that is gone (deleted during the clone) is skipped. A file with
# several links in the source gets its links in the clone too. Returns, per entry, the
# clone's inode ('0': skipped).
CLONE_BATCH = _LOCALS + _COPY + _ROOM + r"""
local root, now, ro = ARGV[2], ARGV[3], ARGV[4] == '1'
if redis.call('HEXISTS', KEYS[1], root) == 0 then return {ENOENT} end
local MK = P .. 'detmap' .. root
local parents, plan, mapped = {}, {}, {}
local add_i, add_b = 0, 0
for i = 5, #ARGV, 4 do
  local src, par, name, dst = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if parents[par] == nil then
    local pa = redis.call('GET', ik(par))
    if not pa or not isdir(pa) then return {ENOENT} end
    parents[par] = pa
  end
  local have = redis.call('HGET', dk(par), name)
  local a = redis.call('GET', ik(src))
  if have then
    plan[#plan + 1] = {'have', string.sub(have, 2)}
  elseif not a then
    plan[#plan + 1] = {'gone'}
  else
    local linked = nil
    local multi = not isdir(a) and u32(a, OFF_NLINK) > 1
    if multi then linked = mapped[src] or redis.call('HGET', MK, src) end
    if linked then
      plan[#plan + 1] = {'link', linked, par, name}
    else
      if redis.call('EXISTS', ik(dst), kk(dst)) > 0 then return {-2} end
      plan[#plan + 1] = {'copy', dst, par, name, src, a, multi}
      if multi then mapped[src] = dst end
      add_i = add_i + 1
      add_b = add_b + fsize(a)
    end
  end
end
local err = room(add_i, add_b)
if err ~= 0 then return {err} end
-- Checked: from here on nothing fails.
local out = {}
for _, p in ipairs(plan) do
  if p[1] == 'copy' then
    local na = copy_inode(p[5], p[6], p[2], p[3], now, ro)
    redis.call('HSET', dk(p[3]), p[4], entry(na, p[2]))
    if isdir(na) then parents[p[3]] = add_nlink(parents[p[3]], 1) end
    if p[7] then redis.call('HSET', MK, p[5], p[2]) end
    out[#out + 1] = p[2]
  elseif p[1] == 'link' then
    local la = redis.call('GET', ik(p[2]))
    redis.call('SET', ik(p[2]), add_nlink(la, 1))
    redis.call('HSET', dk(p[3]), p[4], entry(la, p[2]))
    out[#out + 1] = p[2]
  elseif p[1] == 'have' then
    out[#out + 1] = p[2]
  else
    out[#out + 1] = '0'
  end
end
for par, pa in pairs(parents) do redis.call('SET', ik(par), pa) end
redis.call('HINCRBY', UK, root .. 'b', num(add_b))
redis.call('HINCRBY', UK, root .. 'i', add_i)
redis.call('HINCRBY', CK, 'usedspace', num(add_b))
redis.call('HINCRBY', CK, 'usedinodes', add_i)
return {0, out}
"""

# KEYS: dir(destination), op token  ARGV: P, root, destination, name, now
# Links the finished clone `root` as `name`, charging its usage to the quotas above.
CLONE_ATTACH = _LOCALS + r"""
local r = replay()
if r then return r end
local root, dp, name, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', TK, root) == 0 then return {ENOENT} end
local pa, err = get_dir(dp)
if err ~= 0 then return {err} end
if in_trash(dp, pa) then return {EPERM} end
if frozen(pa) then return {EROFS} end
if redis.call('HEXISTS', KEYS[1], name) == 1 then return {EEXIST} end
local a = redis.call('GET', ik(root))
if not a then return {ENOENT} end
local b = tonumber(redis.call('HGET', UK, root .. 'b') or '0')
local n = tonumber(redis.call('HGET', UK, root .. 'i') or '0')
local chain = quota_chain(dp)
err = quota_check(chain, b, n)
if err ~= 0 then return {err} end
a = put(a, OFF_PARENT, p64(tonumber(dp)))
redis.call('SET', ik(root), a)
redis.call('HSET', KEYS[1], name, entry(a, root))
pa = touch(pa, now)
if isdir(a) then pa = add_nlink(pa, 1) end
redis.call('SET', ik(dp), pa)
quota_add(chain, b, n)
redis.call('HDEL', TK, root)
redis.call('HDEL', UK, root .. 'b', root .. 'i')
redis.call('DEL', P .. 'detmap' .. root)
return done({0, a})
"""

# KEYS: detached  ARGV: P, now, detached root the entries must be under ('': none), then
#       per entry: directory, name
# Removes entries whether or not they are frozen (the one way a snapshot goes): files lose
# a link (no trash: a snapshot's data is shared, not the user's to restore), empty
# directories are freed. A directory that is not empty yet is left (counted as busy).
# With a detached root that was attached meanwhile (a resumed copy finished it), nothing
# is removed and the 4th value is 1.
TREE_REMOVE = r"""
local now = ARGV[2]
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return {0, 0, 0, 1} end
local removed, busy = 0, 0
for i = 4, #ARGV, 2 do
  local par, name = ARGV[i], ARGV[i + 1]
  local pa = redis.call('GET', ik(par))
  local v = pa and redis.call('HGET', dk(par), name)
  if v then
    local ino = string.sub(v, 2)
    local a = redis.call('GET', ik(ino))
    if a and isdir(a) then
      if redis.call('HLEN', dk(ino)) > 0 then
        busy = busy + 1
      else
        redis.call('HDEL', dk(par), name)
        pa = add_nlink(pa, -1)
        quota_add(quota_chain(par), 0, -1)
        free_inode(ino, a)
        removed = removed + 1
      end
    else
      redis.call('HDEL', dk(par), name)
      if a then drop_link(ino, a, par, name, now, '') end
      removed = removed + 1
    end
    redis.call('SET', ik(par), touch(pa, now))
  end
end
return {0, removed, busy}
"""

# KEYS: detached  ARGV: P, root
# Frees the root of an abandoned detached clone once its directory is empty.
TREE_FORGET = _LOCALS + r"""
local root = ARGV[2]
if redis.call('HEXISTS', KEYS[1], root) == 0 then return {0, 0} end
local a = redis.call('GET', ik(root))
if a then
  if isdir(a) and redis.call('HLEN', dk(root)) > 0 then return {ENOTEMPTY} end
  free_inode(root, a)
end
redis.call('HDEL', KEYS[1], root)
redis.call('HDEL', UK, root .. 'b', root .. 'i')
redis.call('DEL', P .. 'detmap' .. root)
return {0, 1}
"""

SCRIPTS = ("CLONE_BEGIN", "CLONE_BATCH", "CLONE_ATTACH", "TREE_REMOVE", "TREE_FORGET")
