"""The PostgreSQL statements of the apply pipeline, in one place (``pipeline`` says when
each runs). SQLite has no variant of its own: it takes the portable SQLAlchemy path
(claim + ``Operation.apply``), where its single writer makes ``SKIP LOCKED`` moot.

A type's own fused SQL stays with the type (``InstanceOperation.pg_update``,
``approval.approve_at_seed``): these statements only wrap it with the claim or the
seed insert and the details' ``success``.
"""

CLAIM_AND_APPLY = """WITH claimed AS (
    SELECT id, item_id, payload, retry_count FROM batch_details
    WHERE batch_id = CAST(:batch_id AS BIGINT) AND status = 'pending'
    ORDER BY id LIMIT CAST(:limit AS INTEGER)
    FOR UPDATE SKIP LOCKED
), {ctes}, recorded AS (
    UPDATE batch_details
    SET status = 'success', error = NULL, finished_at = CAST(:finished AS TIMESTAMPTZ)
    WHERE id = ANY(ARRAY(
        SELECT DISTINCT ON (c.item_id) c.id
        FROM claimed AS c JOIN applied AS a ON a.id = c.item_id
        ORDER BY c.item_id, c.id
    ))
    RETURNING id
)
SELECT c.id, c.item_id, c.payload, c.retry_count, n.applied
FROM (SELECT count(*) AS applied FROM recorded) AS n
LEFT JOIN claimed AS c ON NOT EXISTS (SELECT FROM recorded AS r WHERE r.id = c.id)
ORDER BY c.id
"""
"""``Strategy.EXECUTE_FUSED``: claim (``SKIP LOCKED``), apply the type's ``{ctes}`` and
mark the applied details ``success``, one statement (``executor._claim_and_apply``)."""

SEED_AND_APPLY = """WITH claimed AS (
    SELECT item_id FROM unnest(CAST(:seed_ids AS BIGINT[])) AS u(item_id)
), {ctes}, seeded AS (
    INSERT INTO batch_details (batch_id, item_id, status, retry_count, finished_at)
    SELECT CAST(:seed_batch AS BIGINT), c.item_id,
           CASE WHEN a.id IS NULL THEN 'pending' ELSE 'success' END, 0,
           CASE WHEN a.id IS NULL THEN NULL ELSE CAST(:seed_now AS TIMESTAMPTZ) END
    FROM claimed AS c LEFT JOIN applied AS a ON a.id = c.item_id
    ORDER BY c.item_id
    RETURNING item_id, status
)
SELECT count(*) AS n, max(item_id) AS last,
       count(*) FILTER (WHERE status = 'success') AS applied
FROM seeded
"""
"""``Strategy.SEED_FUSED``, lock-free type: insert a seed page's details, ``success`` for
what the type's ``{ctes}`` applied, ``pending`` for the rest (``details._seed_and_apply``)."""

INSERT_DECIDED = """WITH seeded AS (
    INSERT INTO batch_details (batch_id, item_id, status, retry_count, finished_at)
    SELECT CAST(:batch AS BIGINT), u.item_id, u.status, 0,
           CASE WHEN u.status = 'pending' THEN NULL ELSE CAST(:now AS TIMESTAMPTZ) END
    FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[])) AS u(item_id, status)
    ORDER BY u.item_id
    RETURNING id, item_id, status
)
SELECT id, item_id FROM seeded WHERE status = 'pending'
"""
"""``Strategy.SEED_FUSED``, locking type: insert a seed page's details with the statuses
``apply_at_seed`` decided; returns the pending ones to lock
(``details._seed_locked_and_apply``)."""
