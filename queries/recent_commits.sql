-- The journal's latest commits: when, which batch, which process wrote it, from where (serve or backfill, and which backfill run) and how many rows.
SELECT committed_at, snapshot_id, operation,
       summary['annotable.batch-id'] AS batch_id,
       summary['annotable.writer'] AS writer,
       summary['annotable.source'] AS source,
       summary['annotable.backfill.run'] AS backfill_run,
       summary['annotable.rows'] AS row_count
FROM annotation_journal$snapshots
WHERE summary['annotable.batch-id'] IS NOT NULL
ORDER BY committed_at DESC, snapshot_id
LIMIT 20
