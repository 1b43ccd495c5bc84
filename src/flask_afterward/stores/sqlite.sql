-- All SQL of the sqlite store. Each query starts with a "-- name --" line.
-- Times are Unix timestamps (REAL). Columns match JobRecord's fields, plus expires_at.

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

-- insert --
INSERT OR IGNORE INTO afterward_jobs (
    id, task, payload, state, queue, priority, attempts, max_retries, retry_backoff,
    timeout, result_ttl, unique_key, created_at, run_at, started_at, finished_at,
    worker, lease_until, progress, message, result, error, is_cancel_requested, expires_at
) VALUES (
    :id, :task, :payload, :state, :queue, :priority, :attempts, :max_retries,
    :retry_backoff, :timeout, :result_ttl, :unique_key, :created_at, :run_at,
    :started_at, :finished_at, :worker, :lease_until, :progress, :message, :result,
    :error, :is_cancel_requested, :expires_at
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
ORDER BY created_at DESC, rowid DESC
LIMIT :limit OFFSET :offset;

-- cancel_waiting --
UPDATE afterward_jobs
SET state = 'cancelled', finished_at = :now, expires_at = :now + result_ttl
WHERE id = :id AND state IN ('deferred', 'queued');

-- request_cancel --
UPDATE afterward_jobs SET is_cancel_requested = 1
WHERE id = :id AND state = 'running';

-- release_deferred --
UPDATE afterward_jobs SET state = 'queued'
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'deferred';

-- retry --
UPDATE afterward_jobs
SET state = 'queued', run_at = :now, attempts = 0, started_at = NULL, finished_at = NULL,
    expires_at = NULL, worker = NULL, lease_until = NULL, progress = NULL, message = NULL,
    result = NULL, error = NULL, is_cancel_requested = 0
WHERE id = :id AND state IN ('failed', 'cancelled');

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

-- claim_any --
UPDATE afterward_jobs
SET state = 'running', worker = :worker, lease_until = :now + :lease,
    attempts = attempts + 1, started_at = :now
WHERE id = (
    SELECT id FROM afterward_jobs
    WHERE state = 'queued' AND run_at <= :now
    ORDER BY priority DESC, run_at
    LIMIT 1
)
RETURNING {columns};

-- claim_from_queues --
UPDATE afterward_jobs
SET state = 'running', worker = :worker, lease_until = :now + :lease,
    attempts = attempts + 1, started_at = :now
WHERE id = (
    SELECT id FROM afterward_jobs
    WHERE state = 'queued' AND run_at <= :now
      AND queue IN (SELECT value FROM json_each(:queues))
    ORDER BY priority DESC, run_at
    LIMIT 1
)
RETURNING {columns};

-- release_overdue_deferred --
UPDATE afterward_jobs SET state = 'queued'
WHERE state = 'deferred' AND run_at <= :cutoff;

-- fail_lost --
UPDATE afterward_jobs
SET state = 'failed', worker = NULL, lease_until = NULL, finished_at = :now,
    expires_at = :now + result_ttl, error = :error
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
SET state = 'succeeded', result = :result, finished_at = :now,
    expires_at = :now + result_ttl, worker = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- fail --
UPDATE afterward_jobs
SET state = 'failed', error = :error, finished_at = :now,
    expires_at = :now + result_ttl, worker = NULL, lease_until = NULL
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
    worker = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND worker = :worker;

-- set_progress --
UPDATE afterward_jobs SET progress = :progress, message = :message
WHERE id = :id AND state = 'running'
RETURNING is_cancel_requested;
