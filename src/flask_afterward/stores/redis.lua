-- All Lua of the redis store. Each script starts with a "-- name --" line; "common" is
-- put in front of every other one. Redis runs a script alone, so each one is atomic
-- across every client on every machine. ARGV[1] is always the key prefix.
-- Times arrive as Python repr() strings and are stored as given; a time computed here
-- (an expiry) is written with "%.17g", which a Python float() reads back exactly.

-- common --
local P = ARGV[1]
local JOB = P .. ':job:'
local ACTIVE = {deferred = true, queued = true, running = true}
-- What the indexes need to know of a job; never the payload, which may be large.
local INDEXED = {
    'state', 'queue', 'priority', 'run_at', 'lease_until', 'finished_at', 'result_ttl',
    'unique_key', 'worker', 'attempts', 'max_retries',
}

local function load(id)
    local values = redis.call('HMGET', JOB .. id, unpack(INDEXED))
    if not values[1] then
        return nil
    end
    local job = {id = id}
    for i, name in ipairs(INDEXED) do
        job[name] = values[i]
    end
    return job
end

-- The whole record as one JSON object of its fields: one string to parse in Python
-- instead of two per field (redis-py's reply parser is pure Python).
local function record(id)
    local flat = redis.call('HGETALL', JOB .. id)
    local fields = {}
    for i = 1, #flat, 2 do
        fields[flat[i]] = flat[i + 1]
    end
    return cjson.encode(fields)
end

local function expires_at(job)
    if not job.finished_at then
        return false
    end
    return string.format('%.17g', tonumber(job.finished_at) + tonumber(job.result_ttl))
end

local function ready_key(job)
    return P .. ':ready:' .. job.queue .. ':' .. job.priority
end

-- Take the job out of the index of its state (and its count).
local function unindex(job)
    local state, id = job.state, job.id
    if state == 'queued' then
        local key = ready_key(job)
        redis.call('ZREM', key, id)
        if redis.call('EXISTS', key) == 0 then
            local levels = P .. ':levels:' .. job.queue
            redis.call('ZREM', levels, job.priority)
            if redis.call('EXISTS', levels) == 0 then
                redis.call('SREM', P .. ':queues', job.queue)
            end
        end
    elseif state == 'deferred' then
        redis.call('ZREM', P .. ':deferred', id)
    elseif state == 'running' then
        redis.call('ZREM', P .. ':running', id)
    else
        redis.call('ZREM', P .. ':finished', id)
        redis.call('ZREM', P .. ':done', id)
    end
    redis.call('HINCRBY', P .. ':counts', state .. ':' .. job.queue, -1)
end

-- Put the job in the index of its state, count it, and hold or free its unique key.
local function index(job)
    local state, id = job.state, job.id
    if state == 'queued' then
        redis.call('ZADD', ready_key(job), job.run_at, id)
        redis.call('ZADD', P .. ':levels:' .. job.queue, job.priority, job.priority)
        redis.call('SADD', P .. ':queues', job.queue)
    elseif state == 'deferred' then
        redis.call('ZADD', P .. ':deferred', job.run_at, id)
    elseif state == 'running' then
        if job.lease_until then  -- a running record stored without a lease is never lost
            redis.call('ZADD', P .. ':running', job.lease_until, id)
        end
    else
        local expiry = expires_at(job)
        if expiry then  -- a finished record stored without finished_at never expires
            redis.call('ZADD', P .. ':finished', expiry, id)
            redis.call('ZADD', P .. ':done', job.finished_at, id)
        end
    end
    redis.call('HINCRBY', P .. ':counts', state .. ':' .. job.queue, 1)
    if job.unique_key then
        local key = P .. ':unique:' .. job.unique_key
        if ACTIVE[state] then
            redis.call('SET', key, id)
        elseif redis.call('GET', key) == id then
            redis.call('DEL', key)
        end
    end
end

-- Apply changes {field, value or false (none), ...} and move the job between indexes.
local function change(job, changes)
    unindex(job)
    local set, unset = {}, {}
    for i = 1, #changes, 2 do
        local field, value = changes[i], changes[i + 1]
        job[field] = value
        if value then
            set[#set + 1] = field
            set[#set + 1] = value
        else
            unset[#unset + 1] = field
        end
    end
    if #set > 0 then
        redis.call('HSET', JOB .. job.id, unpack(set))
    end
    if #unset > 0 then
        redis.call('HDEL', JOB .. job.id, unpack(unset))
    end
    index(job)
end

local function is_held(job, worker)
    return job and job.state == 'running' and job.worker == worker
end

-- One lease-holder-only step: 0 if the job is not running under worker, else 1
-- (set_progress: 2 if a cancel was requested).
local function own(id, worker, now, op, value, extra)
    local job = load(id)
    if not is_held(job, worker) then
        return 0
    end
    if op == 'progress' then
        local key = JOB .. id
        redis.call('HSET', key, 'progress', value)
        if extra then
            redis.call('HSET', key, 'message', extra)
        else
            redis.call('HDEL', key, 'message')
        end
        return redis.call('HGET', key, 'is_cancel_requested') == '1' and 2 or 1
    elseif op == 'extend' then
        change(job, {'lease_until', value})
    elseif op == 'complete' then
        change(job, {
            'state', 'succeeded', 'result', value, 'progress', '1.0', 'finished_at', now,
            'worker', false, 'lease_until', false, 'secrets', false,
        })
    elseif op == 'fail' then
        change(job, {
            'state', 'failed', 'error', value, 'finished_at', now,
            'worker', false, 'lease_until', false, 'secrets', false,
        })
    elseif op == 'fail_for_retry' then
        change(job, {
            'state', 'queued', 'error', value, 'run_at', extra,
            'worker', false, 'lease_until', false,
        })
    elseif op == 'requeue' then
        change(job, {
            'state', 'queued', 'attempts', tostring(tonumber(job.attempts) - 1), 'run_at', now,
            'worker', false, 'lease_until', false,
        })
    elseif op == 'mark_cancelled' then
        change(job, {
            'state', 'cancelled', 'finished_at', now,
            'worker', false, 'lease_until', false, 'secrets', false,
        })
    else
        return redis.error_reply('unknown operation ' .. op)
    end
    return 1
end

-- Release deferred jobs older than cutoff; requeue or fail jobs whose lease ran out.
local function recover(now, cutoff, lost_attempts, lost_error)
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':deferred', '-inf', cutoff)) do
        local job = load(id)
        if job and job.state == 'deferred' then
            change(job, {'state', 'queued'})
        end
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', now)) do
        local job = load(id)
        if job and job.state == 'running' then
            if tonumber(job.attempts) >= tonumber(job.max_retries) + 1 + lost_attempts then
                change(job, {
                    'state', 'failed', 'worker', false, 'lease_until', false,
                    'finished_at', now, 'error', lost_error, 'secrets', false,
                })
            else
                change(job, {'state', 'queued', 'worker', false, 'lease_until', false, 'run_at', now})
            end
        end
    end
end

local function start(job, worker, now, lease_until)
    change(job, {
        'state', 'running', 'worker', worker, 'lease_until', lease_until,
        'attempts', tostring(tonumber(job.attempts) + 1), 'started_at', now,
    })
    return record(job.id)
end

-- The ids of the best `limit` runnable jobs of these queues, best first: the priority
-- levels from the highest down, and within one level the oldest run_at of any queue.
local function best(queues, now, limit)
    local levels = {}
    for _, queue in ipairs(queues) do
        local found = redis.call('ZRANGE', P .. ':levels:' .. queue, 0, -1, 'WITHSCORES')
        for i = 1, #found, 2 do
            levels[#levels + 1] = {tonumber(found[i + 1]), found[i], queue}
        end
    end
    table.sort(levels, function(a, b) return a[1] > b[1] end)
    local picked = {}
    local i = 1
    while i <= #levels and #picked < limit do
        local candidates = {}
        local j = i
        while j <= #levels and levels[j][1] == levels[i][1] do
            local key = P .. ':ready:' .. levels[j][3] .. ':' .. levels[j][2]
            local due = redis.call(
                'ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit - #picked
            )
            for k = 1, #due, 2 do
                candidates[#candidates + 1] = {tonumber(due[k + 1]), due[k]}
            end
            j = j + 1
        end
        table.sort(candidates, function(a, b) return a[1] < b[1] end)
        for _, candidate in ipairs(candidates) do
            if #picked < limit then
                picked[#picked + 1] = candidate[2]
            end
        end
        i = j
    end
    return picked
end

-- enqueue --
-- ARGV: prefix, the record's fields as one JSON object of strings (None fields left
-- out: fewer arguments for redis-py to encode one by one). Returns nothing if stored,
-- the record of the active job holding the unique key, or 'duplicate' if a job is
-- stored under this id already.
local fields = cjson.decode(ARGV[2])
local id = fields.id
if fields.unique_key then
    local holder = redis.call('GET', P .. ':unique:' .. fields.unique_key)
    if holder and redis.call('EXISTS', JOB .. holder) == 1 then
        return record(holder)
    end
end
if redis.call('EXISTS', JOB .. id) == 1 then
    return 'duplicate'
end
local pairs_ = {}
for name, value in pairs(fields) do
    pairs_[#pairs_ + 1] = name
    pairs_[#pairs_ + 1] = value
end
redis.call('HSET', JOB .. id, unpack(pairs_))
local job = {id = id}
for _, name in ipairs(INDEXED) do
    job[name] = fields[name] or false
end
redis.call('ZADD', P .. ':jobs', redis.call('INCR', P .. ':seq'), id)
index(job)
return false

-- cancel --
-- ARGV: prefix, id, now. 1 if cancelled or requested, 0 if unknown or finished.
local job = load(ARGV[2])
if not job or not ACTIVE[job.state] then
    return 0
end
if job.state == 'running' then
    redis.call('HSET', JOB .. job.id, 'is_cancel_requested', '1')
else
    change(job, {'state', 'cancelled', 'finished_at', ARGV[3], 'secrets', false})
end
return 1

-- release_deferred --
-- ARGV: prefix, job ids...
for i = 2, #ARGV do
    local job = load(ARGV[i])
    if job and job.state == 'deferred' then
        change(job, {'state', 'queued'})
    end
end
return 0

-- retry --
-- ARGV: prefix, id, now. 1 if queued again.
local job = load(ARGV[2])
if not job or (job.state ~= 'failed' and job.state ~= 'cancelled') then
    return 0
end
local expiry = expires_at(job)
if expiry and tonumber(expiry) <= tonumber(ARGV[3]) then
    return 0  -- expired: gone for get(), even before a prune
end
if job.unique_key and redis.call('EXISTS', P .. ':unique:' .. job.unique_key) == 1 then
    return 0  -- an active job holds the key (only active jobs hold one)
end
change(job, {
    'state', 'queued', 'run_at', ARGV[3], 'attempts', '0', 'started_at', false,
    'finished_at', false, 'worker', false, 'lease_until', false, 'progress', false,
    'message', false, 'result', false, 'error', false, 'is_cancel_requested', '0',
})
return 1

-- prune --
-- ARGV: prefix, now, limit. Deletes up to limit expired jobs; returns how many.
local ids = redis.call('ZRANGEBYSCORE', P .. ':finished', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
    local job = load(id)
    if job then
        unindex(job)
        redis.call('DEL', JOB .. id)
    else
        redis.call('ZREM', P .. ':finished', id)
        redis.call('ZREM', P .. ':done', id)
    end
    redis.call('ZREM', P .. ':jobs', id)
end
return #ids

-- stats --
-- ARGV: prefix, now, since. Returns the counters, then (queue, state) of each job that
-- expired but is not pruned yet (to leave out), then the state of each unexpired job
-- finished since `since`.
local counts = redis.call('HGETALL', P .. ':counts')
local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':finished', '-inf', ARGV[2])) do
    local values = redis.call('HMGET', JOB .. id, 'state', 'queue')
    if values[1] then
        expired[#expired + 1] = values[1] .. ':' .. values[2]
    end
end
local finished = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':done', ARGV[3], '+inf')) do
    local score = redis.call('ZSCORE', P .. ':finished', id)
    if score and tonumber(score) > tonumber(ARGV[2]) then
        finished[#finished + 1] = redis.call('HGET', JOB .. id, 'state')
    end
end
return {counts, expired, finished}

-- start --
-- ARGV: prefix, id, worker, now, lease_until. The started record, or nothing.
local job = load(ARGV[2])
if not job or job.state ~= 'queued' then
    return false
end
return start(job, ARGV[3], ARGV[4], ARGV[5])

-- own --
-- ARGV: prefix, id, worker, now, operation, value, extra (see own() above).
return own(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] or false, ARGV[7] or false)

-- recover --
-- ARGV: prefix, now, cutoff, lost_attempts, lost_error.
recover(ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
return 0

-- complete_and_claim_many --
-- ARGV: prefix, worker, now, lease_until, limit, recover (1/0), cutoff, lost_attempts,
-- lost_error, n (successes), then n times (id, has_result 1/0, result), then 1 and the
-- queues to claim from, or 0 for every queue. Returns {completed flags, claimed records}.
local worker, now, lease_until, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local n = tonumber(ARGV[10])
local completed = {}
for i = 0, n - 1 do
    local at = 11 + 3 * i
    local result = ARGV[at + 1] == '1' and ARGV[at + 2] or false
    completed[#completed + 1] = own(ARGV[at], worker, now, 'complete', result, false)
end
if ARGV[6] == '1' then
    recover(now, ARGV[7], tonumber(ARGV[8]), ARGV[9])
end
local claimed = {}
if limit > 0 then
    local queues = {}
    if ARGV[11 + 3 * n] == '1' then
        for i = 12 + 3 * n, #ARGV do
            queues[#queues + 1] = ARGV[i]
        end
    else
        queues = redis.call('SMEMBERS', P .. ':queues')
    end
    -- A job claimed before (a retry, a recovered one) only ever goes alone.
    local first_is_fresh = true
    for rank, id in ipairs(best(queues, now, limit)) do
        local job = load(id)
        local is_fresh = tonumber(job.attempts) == 0
        if rank == 1 then
            first_is_fresh = is_fresh
        end
        if rank == 1 or (first_is_fresh and is_fresh) then
            claimed[#claimed + 1] = start(job, worker, now, lease_until)
        end
    end
end
return {completed, claimed}
