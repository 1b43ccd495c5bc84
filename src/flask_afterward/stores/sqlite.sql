-- All SQL of the sqlite store. Each query starts with a "-- name --" line; lines that
-- start with "--" are comments, left out of the query.
-- Times are Unix timestamps (REAL). Columns match JobRecord's fields, plus expires_at.
-- In a query, {columns} and {placeholders} stand for JobRecord's fields and one "?"
-- each; {claim_order} for the claim_order fragment below.

-- migration_1 --
CREATE TABLE afterward_jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    retry_backoff REAL NOT NULL,
    timeout REAL,
    result_ttl REAL NOT NULL,
    unique_key TEXT,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    lease_until REAL,
    progress REAL,
    message TEXT,
    result TEXT,
    error TEXT,
    is_cancel_requested INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
-- The claim path: runnable jobs in priority order, overall and per queue.
CREATE INDEX afterward_jobs_runnable ON afterward_jobs (priority DESC, run_at)
    WHERE state = 'queued';
CREATE INDEX afterward_jobs_runnable_by_queue ON afterward_jobs (queue, priority DESC, run_at)
    WHERE state = 'queued';
-- Recovery of deferred and lost jobs, listing and stats by state.
CREATE INDEX afterward_jobs_state ON afterward_jobs (state, queue);
CREATE INDEX afterward_jobs_created ON afterward_jobs (created_at);
CREATE INDEX afterward_jobs_expires ON afterward_jobs (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX afterward_jobs_unique ON afterward_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('deferred', 'queued', 'running');

-- migration_2 --
-- Fewer indexes to update per write (enqueue, claim and complete each rewrite every
-- index they touch into the WAL): recovery gets one small partial index per state it
-- scans, and listing walks the table itself newest first (rowid), so the (state, queue)
-- and created_at indexes go.
DROP INDEX afterward_jobs_state;
DROP INDEX afterward_jobs_created;
CREATE INDEX afterward_jobs_deferred ON afterward_jobs (run_at) WHERE state = 'deferred';
CREATE INDEX afterward_jobs_running ON afterward_jobs (lease_until) WHERE state = 'running';

-- migration_3 --
-- Credentials a job needs (an accepted view's Cookie/Authorization), kept apart from
-- the payload so every terminal transition can wipe them.
ALTER TABLE afterward_jobs ADD COLUMN secrets TEXT;

-- insert_plain --
-- A job without a unique key has nothing to check: the cheapest statement, with
-- positional parameters in JobRecord field order, then expires_at (binding by name
-- costs about a fifth of the INSERT).
INSERT INTO afterward_jobs ({columns}, expires_at) VALUES ({placeholders}, ?);

-- insert --
-- Ignored (no row) when an active job holds the unique key: the unique index catches
-- an active record, the WHERE a finished one (eager mode), which the index does not
-- cover. Parameters as in insert_plain, then the unique key once more.
INSERT OR IGNORE INTO afterward_jobs ({columns}, expires_at)
SELECT {placeholders}, ?
WHERE NOT EXISTS (
    SELECT 1 FROM afterward_jobs
    WHERE unique_key = ? AND state IN ('deferred', 'queued', 'running')
);

-- get_active_unique --
SELECT {columns} FROM afterward_jobs
WHERE unique_key = :unique_key AND state IN ('deferred', 'queued', 'running');

-- get --
SELECT {columns} FROM afterward_jobs
WHERE id = :id AND (expires_at IS NULL OR expires_at > :now);

-- list --
SELECT {columns} FROM afterward_jobs
WHERE (:state IS NULL OR state = :state)
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY rowid DESC
LIMIT :limit OFFSET :offset;

-- cancel_waiting --
UPDATE afterward_jobs
SET state = 'cancelled', finished_at = :now, expires_at = :now + result_ttl, secrets = NULL
WHERE id = :id AND state IN ('deferred', 'queued');

-- request_cancel --
UPDATE afterward_jobs SET is_cancel_requested = 1
WHERE id = :id AND state = 'running';

-- release_deferred --
UPDATE afterward_jobs SET state = 'queued'
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'deferred';

-- retry --
-- Not an expired job (it is gone for get()), and not while another active job holds
-- its unique key (the unique index would refuse it).
UPDATE afterward_jobs
SET state = 'queued', run_at = :now, attempts = 0, started_at = NULL, finished_at = NULL,
    expires_at = NULL, worker = NULL, lease_until = NULL, progress = NULL, message = NULL,
    result = NULL, error = NULL, is_cancel_requested = 0
WHERE id = :id AND state IN ('failed', 'cancelled')
  AND (expires_at IS NULL OR expires_at > :now)
  AND NOT EXISTS (
    SELECT 1 FROM afterward_jobs AS holder
    WHERE holder.unique_key = afterward_jobs.unique_key
      AND holder.state IN ('deferred', 'queued', 'running')
  );

-- prune --
DELETE FROM afterward_jobs WHERE expires_at <= :now;

-- count_by_queue_and_state --
SELECT queue, state, count(*) FROM afterward_jobs
WHERE expires_at IS NULL OR expires_at > :now
GROUP BY queue, state;

-- count_finished_since --
SELECT state, count(*) FROM afterward_jobs
WHERE finished_at >= :since AND (expires_at IS NULL OR expires_at > :now)
GROUP BY state;

-- claim_order --
-- The best runnable job first: records.claim_order, which the memory store and the
-- sort of a claimed batch use, in SQL. The runnable indexes of migration_1 list the
-- same columns in the same order, so a claim walks an index instead of sorting.
priority DESC, run_at

-- claim_any --
-- Up to :limit jobs. INDEXED BY: without statistics the planner prefers another index
-- and sorts every queued job on each claim, which makes draining a backlog quadratic.
-- A job claimed before (a retry, or one recovered from a lost worker) only ever goes
-- alone: when a batch's worker dies, each of its jobs counts an attempt, run or not,
-- and the job that killed it must not take the same others down with it again.
WITH first AS (
    SELECT id, attempts FROM afterward_jobs INDEXED BY afterward_jobs_runnable
    WHERE state = 'queued' AND run_at <= :now
    ORDER BY {claim_order}
    LIMIT 1
)
UPDATE afterward_jobs
SET state = 'running', worker = :worker, lease_until = :now + :lease,
    attempts = attempts + 1, started_at = :now
WHERE id IN (
    SELECT id FROM afterward_jobs INDEXED BY afterward_jobs_runnable
    WHERE state = 'queued' AND run_at <= :now
    ORDER BY {claim_order}
    LIMIT :limit
)
AND (id = (SELECT id FROM first) OR attempts = 0 AND (SELECT attempts FROM first) = 0)
RETURNING {columns};

-- claim_from_queues --
-- The best :limit jobs of each queue are one index range each; the best of those win.
-- (A plain "queue IN (...) ORDER BY ..." sorts every queued job of those queues.)
-- A job claimed before goes alone, as in claim_any.
WITH candidates AS MATERIALIZED (
    SELECT best.id, best.attempts, best.priority, best.run_at
    FROM json_each(:queues) AS wanted
    JOIN afterward_jobs AS best ON best.id IN (
        SELECT id FROM afterward_jobs INDEXED BY afterward_jobs_runnable_by_queue
        WHERE state = 'queued' AND queue = wanted.value AND run_at <= :now
        ORDER BY {claim_order}
        LIMIT :limit
    )
    ORDER BY {claim_order}
    LIMIT :limit
),
first AS (SELECT id, attempts FROM candidates ORDER BY {claim_order} LIMIT 1)
UPDATE afterward_jobs
SET state = 'running', worker = :worker, lease_until = :now + :lease,
    attempts = attempts + 1, started_at = :now
WHERE id IN (SELECT id FROM candidates)
AND (id = (SELECT id FROM first) OR attempts = 0 AND (SELECT attempts FROM first) = 0)
RETURNING {columns};

-- start --
UPDATE afterward_jobs
SET state = 'running', worker = :worker, lease_until = :now + :lease,
    attempts = attempts + 1, started_at = :now
WHERE id = :id AND state = 'queued'
RETURNING {columns};

-- release_overdue_deferred --
UPDATE afterward_jobs SET state = 'queued'
WHERE state = 'deferred' AND run_at <= :cutoff;

-- fail_lost --
UPDATE afterward_jobs
SET state = 'failed', worker = NULL, lease_until = NULL, finished_at = :now,
    expires_at = :now + result_ttl, error = :error, secrets = NULL
WHERE state = 'running' AND lease_until <= :now
  AND attempts >= max_retries + 1 + :lost_attempts;

-- requeue_lost --
UPDATE afterward_jobs
SET state = 'queued', worker = NULL, lease_until = NULL, run_at = :now
WHERE state = 'running' AND lease_until <= :now;

-- extend_lease --
UPDATE afterward_jobs SET lease_until = :now + :lease
WHERE id = :id AND state = 'running' AND worker = :worker;

-- complete --
UPDATE afterward_jobs
SET state = 'succeeded', result = :result, progress = 1.0, finished_at = :now,
    expires_at = :now + result_ttl, worker = NULL, lease_until = NULL, secrets = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- fail --
UPDATE afterward_jobs
SET state = 'failed', error = :error, finished_at = :now,
    expires_at = :now + result_ttl, worker = NULL, lease_until = NULL, secrets = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- fail_for_retry --
UPDATE afterward_jobs
SET state = 'queued', error = :error, run_at = :retry_at, worker = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- requeue --
UPDATE afterward_jobs
SET state = 'queued', attempts = attempts - 1, run_at = :now, worker = NULL,
    lease_until = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- mark_cancelled --
UPDATE afterward_jobs
SET state = 'cancelled', finished_at = :now, expires_at = :now + result_ttl,
    worker = NULL, lease_until = NULL, secrets = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- set_progress --
UPDATE afterward_jobs SET progress = :progress, message = :message
WHERE id = :id AND state = 'running' AND worker = :worker
RETURNING is_cancel_requested;

-- migration_4 --
-- The dashboard (docs/engines.rst, "Dashboard queries"). Finished jobs by state and
-- finish time: the per-state lists (newest first), the counts and the per-minute
-- rollup read this index alone. One entry per finished job, written by the statement
-- that finishes it: the one cost the dashboard adds to the job path.
CREATE INDEX afterward_jobs_finished ON afterward_jobs (state, finished_at, queue, expires_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
-- Search over task names and payloads: a trigram index on the jobs' own columns
-- (external content, nothing copied). It is filled by the rollup in batches, not at
-- enqueue; rows above the 'indexed_to' mark are searched by reading them (seconds'
-- worth). A deleted row leaves the index in the trigger below, which also lowers the
-- mark when the newest rows go, because SQLite then hands their rowids out again.
CREATE VIRTUAL TABLE afterward_search USING fts5(
    task, payload, content='afterward_jobs', content_rowid='rowid', tokenize='trigram'
);
CREATE TABLE afterward_marks (name TEXT PRIMARY KEY, value REAL NOT NULL);
INSERT INTO afterward_marks (name, value) VALUES ('indexed_to', 0), ('rolled_to', 0);
CREATE TRIGGER afterward_jobs_unindex AFTER DELETE ON afterward_jobs
WHEN old.rowid <= (SELECT value FROM afterward_marks WHERE name = 'indexed_to')
BEGIN
    INSERT INTO afterward_search (afterward_search, rowid, task, payload)
    VALUES ('delete', old.rowid, old.task, old.payload);
    UPDATE afterward_marks SET value = (SELECT coalesce(max(rowid), 0) FROM afterward_jobs)
    WHERE name = 'indexed_to' AND value > (SELECT coalesce(max(rowid), 0) FROM afterward_jobs);
END;
-- Jobs finished per minute, queue and state, with run time percentiles; kept 72 h.
CREATE TABLE afterward_minutes (
    minute REAL NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    count INTEGER NOT NULL,
    p50 REAL,
    p95 REAL,
    p99 REAL,
    PRIMARY KEY (minute, queue, state)
) WITHOUT ROWID;
-- Each worker thread's last heartbeat.
CREATE TABLE afterward_workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    thread TEXT NOT NULL,
    queues TEXT,
    job_id TEXT,
    seen_at REAL NOT NULL
);

-- dash_select --
-- The dashboard's lists: this, then dash_* filters joined by AND, an order, a limit.
SELECT {columns}, rowid FROM afterward_jobs
WHERE (expires_at IS NULL OR expires_at > :now)

-- dash_select_ids --
SELECT rowid, id FROM afterward_jobs
WHERE (expires_at IS NULL OR expires_at > :now)

-- dash_state_deferred --
AND state = 'deferred'

-- dash_state_queued --
AND state = 'queued' AND run_at <= :now

-- dash_state_scheduled --
AND state = 'queued' AND run_at > :now

-- dash_state_running --
AND state = 'running'

-- dash_state_finished --
-- The IN is what lets the planner use the partial index with a bound :state.
AND state IN ('succeeded', 'failed', 'cancelled') AND state = :state

-- dash_queue --
AND queue = :queue

-- dash_task --
AND task = :task

-- dash_search --
-- The trigram index, plus the rows it does not hold yet (above the mark).
AND rowid IN (
    SELECT rowid FROM afterward_search WHERE afterward_search MATCH :match
    UNION ALL
    SELECT rowid FROM afterward_jobs
    WHERE rowid > (SELECT value FROM afterward_marks WHERE name = 'indexed_to')
      AND (instr(lower(task), :needle) > 0 OR instr(lower(payload), :needle) > 0)
)

-- dash_after_finished --
AND finished_at <= :key AND (finished_at < :key OR rowid < :rowid)

-- dash_after --
AND rowid < :rowid

-- dash_order_finished --
ORDER BY finished_at DESC, rowid DESC

-- dash_order --
ORDER BY rowid DESC

-- dash_counts --
-- Finished jobs past their TTL are left out at no cost: expires_at is in the index.
SELECT queue, state, count(*) FROM afterward_jobs INDEXED BY afterward_jobs_finished
WHERE state IN ('succeeded', 'failed', 'cancelled') AND (expires_at IS NULL OR expires_at > :now)
GROUP BY queue, state
UNION ALL
SELECT queue, CASE WHEN run_at > :now THEN 'scheduled' ELSE 'queued' END, count(*)
FROM afterward_jobs INDEXED BY afterward_jobs_runnable_by_queue
WHERE state = 'queued'
GROUP BY 1, 2
UNION ALL
SELECT queue, 'deferred', count(*) FROM afterward_jobs WHERE state = 'deferred' GROUP BY 1
UNION ALL
SELECT queue, 'running', count(*) FROM afterward_jobs WHERE state = 'running' GROUP BY 1;

-- dash_oldest_runnable --
SELECT queue, min(run_at) FROM afterward_jobs INDEXED BY afterward_jobs_runnable_by_queue
WHERE state = 'queued' AND run_at <= :now
GROUP BY queue;

-- dash_delete --
DELETE FROM afterward_jobs WHERE id = :id AND state != 'running';

-- dash_get_mark --
SELECT value FROM afterward_marks WHERE name = :name;

-- dash_set_mark --
UPDATE afterward_marks SET value = :value WHERE name = :name;

-- dash_index_to --
-- Where the next batch of rows for the search index ends.
SELECT max(rowid) FROM (
    SELECT rowid FROM afterward_jobs WHERE rowid > :mark ORDER BY rowid LIMIT :limit
);

-- dash_index_new --
INSERT INTO afterward_search (rowid, task, payload)
SELECT rowid, task, payload FROM afterward_jobs WHERE rowid > :mark AND rowid <= :to;

-- dash_max_rowid --
SELECT coalesce(max(rowid), 0) FROM afterward_jobs;

-- dash_finished_between --
SELECT state, queue, finished_at, started_at FROM afterward_jobs
INDEXED BY afterward_jobs_finished
WHERE state IN ('succeeded', 'failed', 'cancelled')
  AND finished_at >= :start AND finished_at < :end;

-- dash_insert_minute --
INSERT OR REPLACE INTO afterward_minutes (minute, queue, state, count, p50, p95, p99)
VALUES (:minute, :queue, :state, :count, :p50, :p95, :p99);

-- dash_prune_minutes --
DELETE FROM afterward_minutes WHERE minute < :before;

-- dash_series --
SELECT minute, queue, state, count, p50, p95, p99 FROM afterward_minutes
WHERE minute >= :since ORDER BY minute, queue, state;

-- dash_heartbeat --
INSERT OR REPLACE INTO afterward_workers (id, host, pid, thread, queues, job_id, seen_at)
VALUES (:id, :host, :pid, :thread, :queues, :job_id, :seen_at);

-- dash_forget_workers --
DELETE FROM afterward_workers WHERE seen_at < :before;

-- dash_workers --
SELECT id, host, pid, thread, queues, job_id, seen_at FROM afterward_workers
ORDER BY host, pid, thread;
