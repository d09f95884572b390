// The key-value backend's store in Redis (issue 9), as Redis 7 functions: every change that touches
// several keys is one FCALL, which Redis runs atomically and writes to the append-only file as one
// MULTI/EXEC, so a crash or a lost connection never leaves half of it. Each function checks every
// precondition before its first write (a function is never rolled back) and answers a file-system
// errno as an error reply ("-ENOENT"). Loaded at every connect with FUNCTION LOAD REPLACE.
//
// Keys, under a prefix per device (several file systems share one server; standalone Redis, the
// functions compute keys from the prefix, which Redis Cluster would not allow):
//   P:next            the last inode number handed out (INCR); the root is 1
//   P:i:INO           an inode: mode uid gid size nlink rdev, times as seconds and nanoseconds
//                     (as an, ms mn, cs cn), `parent` for directories, `target` for symlinks
//   P:d:INO           a directory: name -> inode number
//   P:o:INO           the directory's listing order: name scored by its READDIR offset (3, 4, ...
//                     from the directory's `seq`), so offsets stay stable while entries come and go
//   P:x:INO           extended attributes: name -> value
//   P:meta            the store's chunk size (fixed when formatted); P:bytes the file bytes held
//   P:inodes          inodes that exist (the bound a device sets on them, and what dpfs_check counts)
//   P:c:INO:INDEX     file data in chunks of a fixed size (a missing or short chunk reads as zeros)
//   P:orphans         inodes with no name left (unlinked while open): reclaimed by `dpfs_reclaim`
//                     when the last open ends, and all of them at the next start
// Numbers cross Lua as doubles: sizes and offsets stay below 2^53 (the backend refuses larger).

public enum KVFunctions {
    /// The library's name and version: a new version replaces the old one at the next connect.
    public static let libraryName = "dpfs_v1"

    /// `FUNCTION LOAD REPLACE` takes this text.
    public static let library = #"""
#!lua name=dpfs_v1

local DIR, REG, LNK = 4, 8, 10

local function ikey(p, ino) return p .. ':i:' .. ino end
local function dkey(p, ino) return p .. ':d:' .. ino end
local function ckey(p, ino, index) return p .. ':c:' .. ino .. ':' .. index end
local function okey(p, ino) return p .. ':o:' .. ino end
local function ftype(mode) return math.floor(tonumber(mode) / 4096) % 16 end
-- An error reply "-ERRNO what": the first word is the errno the backend answers with (an error
-- string of one word would reach the client as "-ERR ERRNO").
local WHAT = {ENOENT = 'no such entry', EEXIST = 'entry exists', ENOTDIR = 'not a directory',
              EISDIR = 'is a directory', ENOTEMPTY = 'directory not empty',
              EINVAL = 'a directory cannot move below itself', EPERM = 'directories have no hard links',
              ENODATA = 'no such attribute', ENOSPC = 'store capacity reached', EFBIG = 'file too large'}
local function fail(errno) return redis.error_reply(errno .. ' ' .. (WHAT[errno] or 'refused')) end

local ATTRS = {'mode', 'uid', 'gid', 'size', 'nlink', 'rdev', 'as', 'an', 'ms', 'mn', 'cs', 'cn'}

-- The inode number and its attributes, as bulk strings (no precision lost on the way).
local function attrs(p, ino)
  local a = redis.call('HMGET', ikey(p, ino), unpack(ATTRS))
  table.insert(a, 1, tostring(ino))
  return a
end

local function touch(p, ino, s, ns, fields)
  for _, f in ipairs(fields) do redis.call('HSET', ikey(p, ino), f .. 's', s, f .. 'n', ns) end
end

-- The mode of a directory inode, or an errno.
local function directory(p, ino)
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  if not mode then return nil, 'ENOENT' end
  if ftype(mode) ~= DIR then return nil, 'ENOTDIR' end
  return mode
end

local function chunks_of(size, chunk)
  if size <= 0 then return 0 end
  return math.floor((size - 1) / chunk) + 1
end

-- The file bytes the store holds (statfs, the capacity check).
local function account(p, delta)
  if delta ~= 0 then redis.call('INCRBY', p .. ':bytes', delta) end
end

-- A directory entry: the name, and its place in the listing order.
local function add_entry(p, dir, name, ino)
  redis.call('HSET', dkey(p, dir), name, ino)
  local seq = redis.call('HINCRBY', ikey(p, dir), 'seq', 1)
  redis.call('ZADD', okey(p, dir), seq + 2, name)
end

local function remove_entry(p, dir, name)
  redis.call('HDEL', dkey(p, dir), name)
  redis.call('ZREM', okey(p, dir), name)
end

local function delete_inode(p, ino, chunk)
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  local size = tonumber(redis.call('HGET', ikey(p, ino), 'size') or '0')
  if mode and ftype(mode) == REG then
    for index = 0, chunks_of(size, chunk) - 1 do redis.call('DEL', ckey(p, ino, index)) end
    account(p, -size)
  end
  if mode then redis.call('DECR', p .. ':inodes') end
  redis.call('DEL', ikey(p, ino), dkey(p, ino), okey(p, ino), p .. ':x:' .. ino)
  redis.call('SREM', p .. ':orphans', ino)
end

-- One name less for a non-directory: at no name left it becomes an orphan (reclaimed later).
local function drop_link(p, ino, s, ns)
  local nlink = redis.call('HINCRBY', ikey(p, ino), 'nlink', -1)
  touch(p, ino, s, ns, {'c'})
  if nlink <= 0 then redis.call('SADD', p .. ':orphans', ino) end
end

-- dpfs_format P UID GID MODE S NS: the root directory, once.
redis.register_function('dpfs_format', function(_, a)
  local p = a[1]
  if redis.call('EXISTS', ikey(p, 1)) == 1 then return attrs(p, 1) end
  redis.call('SET', p .. ':next', 1)
  redis.call('SET', p .. ':inodes', 1)
  redis.call('HSET', ikey(p, 1), 'mode', a[4], 'uid', a[2], 'gid', a[3], 'size', 4096, 'nlink', 2, 'rdev', 0,
             'as', a[5], 'an', a[6], 'ms', a[5], 'mn', a[6], 'cs', a[5], 'cn', a[6], 'parent', 1)
  return attrs(p, 1)
end)

redis.register_function{function_name = 'dpfs_getattr', flags = {'no-writes'}, callback = function(_, a)
  if redis.call('EXISTS', ikey(a[1], a[2])) == 0 then return fail('ENOENT') end
  return attrs(a[1], a[2])
end}

redis.register_function{function_name = 'dpfs_lookup', flags = {'no-writes'}, callback = function(_, a)
  local _, errno = directory(a[1], a[2])
  if errno then return fail(errno) end
  local ino = redis.call('HGET', dkey(a[1], a[2]), a[3])
  if not ino then return fail('ENOENT') end
  return attrs(a[1], ino)
end}

-- dpfs_create P PARENT NAME MODE UID GID RDEV S NS TARGET [SHARED [INODES]]: a file, directory,
-- symlink or node. SHARED '1' (an open(2) with O_CREAT and no O_EXCL): a regular file of that name
-- is answered. INODES: how many inodes the store may hold (ENOSPC at the bound).
redis.register_function('dpfs_create', function(_, a)
  local p, parent, name, mode = a[1], a[2], a[3], a[4]
  local pmode, errno = directory(p, parent)
  if errno then return fail(errno) end
  local gid = a[6]
  -- A set-group-ID directory hands its group down, and its bit to directories made in it (the
  -- kernel already took the bit off a file whose creator is not in the group).
  if math.floor(tonumber(pmode) / 1024) % 2 == 1 then
    gid = redis.call('HGET', ikey(p, parent), 'gid')
    if ftype(mode) == DIR and math.floor(tonumber(mode) / 1024) % 2 == 0 then mode = tonumber(mode) + 1024 end
  end
  local existing = redis.call('HGET', dkey(p, parent), name)
  if existing then
    if a[11] == '1' and ftype(redis.call('HGET', ikey(p, existing), 'mode')) == REG then return attrs(p, existing) end
    return fail('EEXIST')
  end
  local kind = ftype(mode)
  if a[12] and tonumber(redis.call('GET', p .. ':inodes') or '0') >= tonumber(a[12]) then return fail('ENOSPC') end
  local ino = redis.call('INCR', p .. ':next')
  redis.call('INCR', p .. ':inodes')
  local size = 0
  if kind == DIR then size = 4096 elseif kind == LNK then size = #a[10] end
  redis.call('HSET', ikey(p, ino), 'mode', mode, 'uid', a[5], 'gid', gid, 'size', size,
             'nlink', kind == DIR and 2 or 1, 'rdev', a[7],
             'as', a[8], 'an', a[9], 'ms', a[8], 'mn', a[9], 'cs', a[8], 'cn', a[9])
  if kind == DIR then
    redis.call('HSET', ikey(p, ino), 'parent', parent)
    redis.call('HINCRBY', ikey(p, parent), 'nlink', 1)
  end
  if kind == LNK then redis.call('HSET', ikey(p, ino), 'target', a[10]) end
  add_entry(p, parent, name, ino)
  touch(p, parent, a[8], a[9], {'m', 'c'})
  return attrs(p, ino)
end)

-- dpfs_unlink P PARENT NAME S NS: the inode's number and links left (0: an orphan now).
redis.register_function('dpfs_unlink', function(_, a)
  local p, parent, name = a[1], a[2], a[3]
  local _, errno = directory(p, parent)
  if errno then return fail(errno) end
  local ino = redis.call('HGET', dkey(p, parent), name)
  if not ino then return fail('ENOENT') end
  if ftype(redis.call('HGET', ikey(p, ino), 'mode')) == DIR then return fail('EISDIR') end
  remove_entry(p, parent, name)
  drop_link(p, ino, a[4], a[5])
  touch(p, parent, a[4], a[5], {'m', 'c'})
  return {tonumber(ino), tonumber(redis.call('HGET', ikey(p, ino), 'nlink'))}
end)

-- dpfs_rmdir P PARENT NAME S NS CHUNK
redis.register_function('dpfs_rmdir', function(_, a)
  local p, parent, name = a[1], a[2], a[3]
  local _, errno = directory(p, parent)
  if errno then return fail(errno) end
  local ino = redis.call('HGET', dkey(p, parent), name)
  if not ino then return fail('ENOENT') end
  if ftype(redis.call('HGET', ikey(p, ino), 'mode')) ~= DIR then return fail('ENOTDIR') end
  if redis.call('HLEN', dkey(p, ino)) > 0 then return fail('ENOTEMPTY') end
  remove_entry(p, parent, name)
  delete_inode(p, ino, tonumber(a[6]))
  redis.call('HINCRBY', ikey(p, parent), 'nlink', -1)
  touch(p, parent, a[4], a[5], {'m', 'c'})
  return tonumber(ino)
end)

-- Whether directory `ancestor` is `dir` or lies above it (a directory cannot move below itself).
local function above(p, ancestor, dir)
  local current = dir
  for _ = 1, 4096 do
    if current == ancestor then return true end
    if current == '1' then return false end
    current = redis.call('HGET', ikey(p, current), 'parent')
    if not current then return false end
  end
  return true
end

-- Moves a directory inode between parents: link counts and its parent field.
local function reparent(p, ino, from, to)
  if from == to or ftype(redis.call('HGET', ikey(p, ino), 'mode')) ~= DIR then return end
  redis.call('HINCRBY', ikey(p, from), 'nlink', -1)
  redis.call('HINCRBY', ikey(p, to), 'nlink', 1)
  redis.call('HSET', ikey(p, ino), 'parent', to)
end

-- The checks of a RENAME that replaces `dst` with `src`, or an errno.
local function replace_errno(p, src, dst)
  local sdir = ftype(redis.call('HGET', ikey(p, src), 'mode')) == DIR
  local ddir = ftype(redis.call('HGET', ikey(p, dst), 'mode')) == DIR
  if sdir and not ddir then return 'ENOTDIR' end
  if ddir and not sdir then return 'EISDIR' end
  if ddir and redis.call('HLEN', dkey(p, dst)) > 0 then return 'ENOTEMPTY' end
  return nil
end

-- dpfs_rename P OLDPARENT OLDNAME NEWPARENT NEWNAME FLAGS S NS CHUNK (FLAGS: 1 NOREPLACE, 2 EXCHANGE):
-- the replaced file's inode when it lost its last name (an orphan now), else 0.
redis.register_function('dpfs_rename', function(_, a)
  local p, op, on, np, nn, flags, s, ns = a[1], a[2], a[3], a[4], a[5], tonumber(a[6]), a[7], a[8]
  for _, dir in ipairs({op, np}) do
    local _, errno = directory(p, dir)
    if errno then return fail(errno) end
  end
  local src = redis.call('HGET', dkey(p, op), on)
  if not src then return fail('ENOENT') end
  local dst = redis.call('HGET', dkey(p, np), nn)
  if flags == 1 and dst then return fail('EEXIST') end
  if flags == 2 and not dst then return fail('ENOENT') end
  if src == dst then return 0 end
  local sdir = ftype(redis.call('HGET', ikey(p, src), 'mode')) == DIR
  if sdir and above(p, src, np) then return fail('EINVAL') end
  if flags == 2 then
    if ftype(redis.call('HGET', ikey(p, dst), 'mode')) == DIR and above(p, dst, op) then return fail('EINVAL') end
    redis.call('HSET', dkey(p, op), on, dst)
    redis.call('HSET', dkey(p, np), nn, src)
    reparent(p, src, op, np)
    reparent(p, dst, np, op)
    touch(p, src, s, ns, {'c'})
    touch(p, dst, s, ns, {'c'})
  else
    local orphan = 0
    if dst then
      local errno = replace_errno(p, src, dst)
      if errno then return fail(errno) end
      if ftype(redis.call('HGET', ikey(p, dst), 'mode')) == DIR then
        delete_inode(p, dst, tonumber(a[9]))
        redis.call('HINCRBY', ikey(p, np), 'nlink', -1)
      else
        drop_link(p, dst, s, ns)
        if tonumber(redis.call('HGET', ikey(p, dst), 'nlink')) <= 0 then orphan = tonumber(dst) end
      end
    end
    remove_entry(p, op, on)
    if dst then redis.call('HSET', dkey(p, np), nn, src) else add_entry(p, np, nn, src) end
    reparent(p, src, op, np)
    touch(p, src, s, ns, {'c'})
    touch(p, op, s, ns, {'m', 'c'})
    touch(p, np, s, ns, {'m', 'c'})
    return orphan
  end
  touch(p, op, s, ns, {'m', 'c'})
  touch(p, np, s, ns, {'m', 'c'})
  return 0
end)

-- dpfs_link P INO NEWPARENT NEWNAME S NS
redis.register_function('dpfs_link', function(_, a)
  local p, ino, np, nn = a[1], a[2], a[3], a[4]
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  if not mode or tonumber(redis.call('HGET', ikey(p, ino), 'nlink')) <= 0 then return fail('ENOENT') end
  if ftype(mode) == DIR then return fail('EPERM') end
  local _, errno = directory(p, np)
  if errno then return fail(errno) end
  if redis.call('HEXISTS', dkey(p, np), nn) == 1 then return fail('EEXIST') end
  add_entry(p, np, nn, ino)
  redis.call('HINCRBY', ikey(p, ino), 'nlink', 1)
  touch(p, ino, a[5], a[6], {'c'})
  touch(p, np, a[5], a[6], {'m', 'c'})
  return attrs(p, ino)
end)

-- dpfs_write P INO OFFSET DATA CHUNK S NS [CAPACITY [KILL]]: the bytes written, across chunk
-- boundaries. KILL '1' (a writer without CAP_FSETID): set-user-ID goes, and set-group-ID with
-- group execute, as a local file system drops them.
redis.register_function('dpfs_write', function(_, a)
  local p, ino, offset, data, chunk = a[1], a[2], tonumber(a[3]), a[4], tonumber(a[5])
  local size = redis.call('HGET', ikey(p, ino), 'size')
  if not size then return fail('ENOENT') end
  if ftype(redis.call('HGET', ikey(p, ino), 'mode')) ~= REG then return fail('EISDIR') end
  local growth = math.max(0, offset + #data - tonumber(size))
  if a[8] and growth > 0 and tonumber(redis.call('GET', p .. ':bytes') or '0') + growth > tonumber(a[8]) then
    return fail('ENOSPC')
  end
  account(p, growth)
  if a[9] == '1' then
    local old = tonumber(redis.call('HGET', ikey(p, ino), 'mode'))
    local new = old
    if math.floor(new / 2048) % 2 == 1 then new = new - 2048 end
    if math.floor(new / 1024) % 2 == 1 and math.floor(new / 8) % 2 == 1 then new = new - 1024 end
    if new ~= old then redis.call('HSET', ikey(p, ino), 'mode', new) end
  end
  local done = 0
  while done < #data do
    local at = offset + done
    local index = math.floor(at / chunk)
    local within = at % chunk
    local n = math.min(chunk - within, #data - done)
    redis.call('SETRANGE', ckey(p, ino, index), within, string.sub(data, done + 1, done + n))
    done = done + n
  end
  if offset + #data > tonumber(size) then redis.call('HSET', ikey(p, ino), 'size', offset + #data) end
  touch(p, ino, a[6], a[7], {'m', 'c'})
  return done
end)

-- dpfs_read P INO OFFSET SIZE CHUNK: the bytes, holes and short chunks as zeros.
redis.register_function{function_name = 'dpfs_read', flags = {'no-writes'}, callback = function(_, a)
  local p, ino, offset, wanted, chunk = a[1], a[2], tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
  local size = redis.call('HGET', ikey(p, ino), 'size')
  if not size then return fail('ENOENT') end
  local count = math.max(0, math.min(wanted, tonumber(size) - offset))
  local parts = {}
  local done = 0
  while done < count do
    local at = offset + done
    local index = math.floor(at / chunk)
    local within = at % chunk
    local n = math.min(chunk - within, count - done)
    local piece = redis.call('GETRANGE', ckey(p, ino, index), within, within + n - 1)
    if #piece < n then piece = piece .. string.rep('\0', n - #piece) end
    parts[#parts + 1] = piece
    done = done + n
  end
  return table.concat(parts)
end}

-- Sets a regular file's size: chunks past the end go, the last one is cut (what truncation cut off
-- reads as zeros when the file grows again).
local function resize(p, ino, size, chunk)
  local old = tonumber(redis.call('HGET', ikey(p, ino), 'size'))
  account(p, size - old)
  if size < old then
    for index = chunks_of(size, chunk), chunks_of(old, chunk) - 1 do redis.call('DEL', ckey(p, ino, index)) end
    local within = size % chunk
    if within > 0 then
      local key = ckey(p, ino, math.floor(size / chunk))
      local kept = redis.call('GETRANGE', key, 0, within - 1)
      if #kept > 0 then redis.call('SET', key, kept) end
    end
  end
  redis.call('HSET', ikey(p, ino), 'size', size)
end

-- dpfs_truncate P INO SIZE CHUNK S NS
redis.register_function('dpfs_truncate', function(_, a)
  local p, ino, size, chunk = a[1], a[2], tonumber(a[3]), tonumber(a[4])
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  if not mode then return fail('ENOENT') end
  if ftype(mode) ~= REG then return fail('EISDIR') end
  resize(p, ino, size, chunk)
  touch(p, ino, a[5], a[6], {'m', 'c'})
  return attrs(p, ino)
end)

-- dpfs_punch P INO OFFSET LENGTH CHUNK S NS: the range reads as zeros (fallocate's PUNCH_HOLE with
-- KEEP_SIZE): whole chunks go, the ends of partial ones are overwritten with zeros; the size stays.
redis.register_function('dpfs_punch', function(_, a)
  local p, ino, offset, length, chunk = a[1], a[2], tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  if not mode then return fail('ENOENT') end
  if ftype(mode) ~= REG then return fail('EISDIR') end
  local finish = math.min(offset + length, tonumber(redis.call('HGET', ikey(p, ino), 'size')))
  local at = offset
  while at < finish do
    local index = math.floor(at / chunk)
    local within = at % chunk
    local n = math.min(chunk - within, finish - at)
    local key = ckey(p, ino, index)
    if n == chunk then
      redis.call('DEL', key)
    else
      local present = redis.call('STRLEN', key)
      local upto = math.min(within + n, present)
      if upto > within then redis.call('SETRANGE', key, within, string.rep('\0', upto - within)) end
    end
    at = at + n
  end
  touch(p, ino, a[6], a[7], {'m', 'c'})
  return 0
end)

-- dpfs_setattr P INO WHAT MODE UID GID SIZE AS AN MS MN S NS CHUNK CAPACITY: WHAT's bits say what
-- changes (1 mode, 2 uid, 4 gid, 8 size, 16 atime, 32 mtime, 64 size only grows: fallocate).
-- The change time is always S NS. The attributes after.
redis.register_function('dpfs_setattr', function(_, a)
  local p, ino, what = a[1], a[2], tonumber(a[3])
  local mode = redis.call('HGET', ikey(p, ino), 'mode')
  if not mode then return fail('ENOENT') end
  local function has(bit_) return math.floor(what / bit_) % 2 == 1 end
  if has(8) or has(64) then
    if ftype(mode) == DIR then return fail('EISDIR') end
    if ftype(mode) ~= REG then return fail('EINVAL') end
    local size, old = tonumber(a[7]), tonumber(redis.call('HGET', ikey(p, ino), 'size'))
    if has(64) and size < old then size = old end
    if size > old and tonumber(redis.call('GET', p .. ':bytes') or '0') + size - old > tonumber(a[15]) then
      return fail('ENOSPC')
    end
    if size ~= old or has(8) then
      resize(p, ino, size, tonumber(a[14]))
      touch(p, ino, a[12], a[13], {'m'})
    end
  end
  if has(1) then redis.call('HSET', ikey(p, ino), 'mode', ftype(mode) * 4096 + tonumber(a[4]) % 4096) end
  if has(2) then redis.call('HSET', ikey(p, ino), 'uid', a[5]) end
  if has(4) then redis.call('HSET', ikey(p, ino), 'gid', a[6]) end
  if has(16) then redis.call('HSET', ikey(p, ino), 'as', a[8], 'an', a[9]) end
  if has(32) then redis.call('HSET', ikey(p, ino), 'ms', a[10], 'mn', a[11]) end
  touch(p, ino, a[12], a[13], {'c'})
  return attrs(p, ino)
end)

-- dpfs_readdir P DIR OFFSET COUNT PLUS: the directory's parent, then up to COUNT entries after
-- OFFSET in listing order, each as OFFSET INO MODE NAME, or with PLUS '1' as OFFSET, the 13
-- attribute strings, NAME.
redis.register_function{function_name = 'dpfs_readdir', flags = {'no-writes'}, callback = function(_, a)
  local p, dir, offset, count, plus = a[1], a[2], tonumber(a[3]), tonumber(a[4]), a[5] == '1'
  -- A directory removed while the guest had it open lists as empty, as a local one does.
  if redis.call('EXISTS', ikey(p, dir)) == 0 then return {dir} end
  local _, errno = directory(p, dir)
  if errno then return fail(errno) end
  local out = {redis.call('HGET', ikey(p, dir), 'parent') or '1'}
  local page = redis.call('ZRANGE', okey(p, dir), '(' .. math.max(offset, 2), '+inf', 'BYSCORE', 'LIMIT', 0, count, 'WITHSCORES')
  for i = 1, #page, 2 do
    local ino = redis.call('HGET', dkey(p, dir), page[i])
    if ino then
      out[#out + 1] = page[i + 1]
      if plus then
        for _, v in ipairs(attrs(p, ino)) do out[#out + 1] = v end
      else
        out[#out + 1] = ino
        out[#out + 1] = redis.call('HGET', ikey(p, ino), 'mode')
      end
      out[#out + 1] = page[i]
    end
  end
  return out
end}

-- dpfs_readlink P INO
redis.register_function{function_name = 'dpfs_readlink', flags = {'no-writes'}, callback = function(_, a)
  local mode = redis.call('HGET', ikey(a[1], a[2]), 'mode')
  if not mode then return fail('ENOENT') end
  if ftype(mode) ~= LNK then return fail('EINVAL') end
  return redis.call('HGET', ikey(a[1], a[2]), 'target')
end}

-- dpfs_setxattr P INO NAME VALUE FLAGS S NS (FLAGS: 1 XATTR_CREATE, 2 XATTR_REPLACE); 256 names at most
redis.register_function('dpfs_setxattr', function(_, a)
  local p, ino, flags = a[1], a[2], tonumber(a[5])
  if redis.call('EXISTS', ikey(p, ino)) == 0 then return fail('ENOENT') end
  local present = redis.call('HEXISTS', p .. ':x:' .. ino, a[3]) == 1
  if flags == 1 and present then return fail('EEXIST') end
  if flags == 2 and not present then return fail('ENODATA') end
  -- At most 256 names (of at most 255 bytes): a listing fits LISTXATTR's 64 KiB.
  if not present and redis.call('HLEN', p .. ':x:' .. ino) >= 256 then return fail('ENOSPC') end
  redis.call('HSET', p .. ':x:' .. ino, a[3], a[4])
  touch(p, ino, a[6], a[7], {'c'})
  return 0
end)

redis.register_function{function_name = 'dpfs_getxattr', flags = {'no-writes'}, callback = function(_, a)
  if redis.call('EXISTS', ikey(a[1], a[2])) == 0 then return fail('ENOENT') end
  local value = redis.call('HGET', a[1] .. ':x:' .. a[2], a[3])
  if not value then return fail('ENODATA') end
  return value
end}

redis.register_function{function_name = 'dpfs_listxattr', flags = {'no-writes'}, callback = function(_, a)
  if redis.call('EXISTS', ikey(a[1], a[2])) == 0 then return fail('ENOENT') end
  return redis.call('HKEYS', a[1] .. ':x:' .. a[2])
end}

-- dpfs_removexattr P INO NAME S NS
redis.register_function('dpfs_removexattr', function(_, a)
  if redis.call('EXISTS', ikey(a[1], a[2])) == 0 then return fail('ENOENT') end
  if redis.call('HDEL', a[1] .. ':x:' .. a[2], a[3]) == 0 then return fail('ENODATA') end
  touch(a[1], a[2], a[4], a[5], {'c'})
  return 0
end)

-- dpfs_statfs P: file bytes held, inodes that exist, orphans waiting.
redis.register_function{function_name = 'dpfs_statfs', flags = {'no-writes'}, callback = function(_, a)
  local p = a[1]
  return {tonumber(redis.call('GET', p .. ':bytes') or '0'), tonumber(redis.call('GET', p .. ':inodes') or '0'),
          redis.call('SCARD', p .. ':orphans')}
end}

-- dpfs_reclaim P INO CHUNK: an orphan whose last open ended goes (0 when it still has a name).
redis.register_function('dpfs_reclaim', function(_, a)
  local p, ino = a[1], a[2]
  if redis.call('SISMEMBER', p .. ':orphans', ino) == 0 then return 0 end
  delete_inode(p, ino, tonumber(a[3]))
  return 1
end)

-- dpfs_start P UID GID MODE S NS CHUNK: at the engine's start. Formats an empty store (the root,
-- the chunk size), and reclaims every orphan (no file is open before the engine serves). The
-- store's chunk size (fixed when it was formatted) and the orphans reclaimed.
redis.register_function('dpfs_start', function(_, a)
  local p = a[1]
  if redis.call('EXISTS', ikey(p, 1)) == 0 then
    redis.call('SET', p .. ':next', 1)
    redis.call('SET', p .. ':inodes', 1)
    redis.call('HSET', ikey(p, 1), 'mode', a[4], 'uid', a[2], 'gid', a[3], 'size', 4096, 'nlink', 2, 'rdev', 0,
               'as', a[5], 'an', a[6], 'ms', a[5], 'mn', a[6], 'cs', a[5], 'cn', a[6], 'parent', 1)
  end
  if redis.call('EXISTS', p .. ':inodes') == 0 then
    -- A store made before the count was kept: count once.
    local cursor, count = '0', 0
    repeat
      local page = redis.call('SCAN', cursor, 'MATCH', p .. ':i:*', 'COUNT', 1000)
      cursor, count = page[1], count + #page[2]
    until cursor == '0'
    redis.call('SET', p .. ':inodes', count)
  end
  if not redis.call('HGET', p .. ':meta', 'chunk') then redis.call('HSET', p .. ':meta', 'chunk', a[7]) end
  local chunk = tonumber(redis.call('HGET', p .. ':meta', 'chunk'))
  local orphans = redis.call('SMEMBERS', p .. ':orphans')
  for _, ino in ipairs(orphans) do delete_inode(p, ino, chunk) end
  return {chunk, #orphans}
end)

-- dpfs_check P: what is inconsistent (empty when the store is whole): dangling entries, inodes
-- nothing names and no orphan list holds, link counts that do not match, wrong parents.
redis.register_function{function_name = 'dpfs_check', flags = {'no-writes'}, callback = function(_, a)
  local p = a[1]
  local problems = {}
  local names, subdirs, seen = {}, {}, {}
  local queue = {'1'}
  seen['1'] = true
  while #queue > 0 do
    local dir = table.remove(queue)
    local entries = redis.call('HGETALL', dkey(p, dir))
    for i = 1, #entries, 2 do
      local ino = entries[i + 1]
      local mode = redis.call('HGET', ikey(p, ino), 'mode')
      if not mode then
        problems[#problems + 1] = 'dangling ' .. dir .. '/' .. entries[i]
      else
        names[ino] = (names[ino] or 0) + 1
        if ftype(mode) == DIR then
          subdirs[dir] = (subdirs[dir] or 0) + 1
          if redis.call('HGET', ikey(p, ino), 'parent') ~= dir then problems[#problems + 1] = 'parent of ' .. ino end
          if not seen[ino] then seen[ino] = true; queue[#queue + 1] = ino end
        end
      end
    end
  end
  local cursor, inodes = '0', 0
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', p .. ':i:*', 'COUNT', 1000)
    cursor = page[1]
    inodes = inodes + #page[2]
    for _, key in ipairs(page[2]) do
      local ino = string.sub(key, #p + 4)
      local mode = redis.call('HGET', key, 'mode')
      local nlink = tonumber(redis.call('HGET', key, 'nlink'))
      if ftype(mode) == DIR then
        if ino ~= '1' and not names[ino] then problems[#problems + 1] = 'unreachable directory ' .. ino end
        if nlink ~= 2 + (subdirs[ino] or 0) then problems[#problems + 1] = 'nlink of directory ' .. ino end
      else
        if nlink ~= (names[ino] or 0) then problems[#problems + 1] = 'nlink of ' .. ino end
        if not names[ino] and redis.call('SISMEMBER', p .. ':orphans', ino) == 0 then
          problems[#problems + 1] = 'orphan ' .. ino .. ' not listed'
        end
      end
    end
  until cursor == '0'
  if tonumber(redis.call('GET', p .. ':inodes') or '-1') ~= inodes then problems[#problems + 1] = 'inode count' end
  return problems
end}
"""#
}
