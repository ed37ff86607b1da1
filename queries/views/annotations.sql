-- annotations: the current state of every annotation, with exactly the columns of the AWS S3
-- Metadata annotation table, derived from the append-only annotation_journal.
--
-- Rule (design.md §2): for each (bucket, object_key, object_version_id, name) take the row with
-- the largest sequence_number; the annotation exists if that row is a PUT and no OBJECT_RESET of
-- the same object version has a strictly larger sequence_number (a re-list writes its
-- OBJECT_RESET and its PUTs with one sequence_number, so those PUTs survive it). annotable never
-- gives two rows of one annotation the same sequence_number (it carries a writer id).
--
-- Portable SQL on purpose (no window, no engine-specific aggregate): the same text defines the
-- view in Athena, Trino, Spark or DuckDB over the same Iceberg table.
--
-- It groups and joins on the journal's identity columns rather than on the strings they stand
-- for: annotation_hash is (bucket, object_key, object_version_id, name) and object_version_hash
-- is (bucket, object_key, object_version_id) as one decimal(38, 0) each (a null version counts
-- as '', as COALESCE(object_version_id, '') did). On 5M rows, grouping on four strings and
-- joining back on five was most of the view's cost. bucket stays in the keys, so that a filter
-- on bucket reaches all three scans of the journal and prunes its partitions.
-- It is a group-by + join rather than row_number(): on 5M rows DataFusion runs the window
-- several times slower and with several times the memory.
--
-- Join order, for DataFusion, which builds a hash join's table from its left input: the
-- aggregate `latest` (one row per annotation) is the left side of the join back to the
-- journal, and the few resets are the left side of a RIGHT JOIN rather than the right side of
-- a LEFT JOIN (which hashed every current annotation).
--
-- Every column of `latest` and `reset` has a name of its own (latest_*, reset_*), on purpose.
-- With same-named columns on both sides, DataFusion 53.1's leaf-expression pushdown (the rule
-- that moves json_get_str(text_value, ...) down to the scan) rewrote the RIGHT JOIN's output
-- p.bucket, p.object_key as reset.bucket, reset.object_key, which are NULL for objects never
-- reset: queries/objects_by_annotation_value.sql returned NULL keys.
CREATE VIEW annotations AS
WITH latest AS (
    SELECT bucket AS latest_bucket,
           annotation_hash AS latest_annotation_hash,
           MAX(sequence_number) AS latest_sequence_number
    FROM annotation_journal
    WHERE annotation_hash IS NOT NULL
    GROUP BY bucket, annotation_hash
),
reset AS (
    SELECT bucket AS reset_bucket,
           object_version_hash AS reset_object_version_hash,
           MAX(sequence_number) AS reset_sequence_number
    FROM annotation_journal
    WHERE record_type = 'OBJECT_RESET'
    GROUP BY bucket, object_version_hash
),
current_put AS (
    SELECT j.bucket, j.object_key, j.object_version_id, j.object_join_key, j.name,
           j.sequence_number, j.last_modified_date, j.size, j.e_tag, j.checksum_algorithm,
           j.replication_status, j.text_value, j.object_version_hash AS put_object_version_hash
    FROM latest
    JOIN annotation_journal j
      ON  j.bucket = latest.latest_bucket
      AND j.annotation_hash = latest.latest_annotation_hash
      AND j.sequence_number = latest.latest_sequence_number
    WHERE j.record_type = 'PUT'
)
SELECT
    p.bucket,
    p.object_key,
    p.object_version_id,
    p.object_join_key,
    p.name,
    p.sequence_number,
    p.last_modified_date,
    p.size,
    p.e_tag,
    p.checksum_algorithm,
    p.replication_status,
    p.text_value
FROM reset
RIGHT JOIN current_put p
  ON  p.bucket = reset.reset_bucket
  AND p.put_object_version_hash = reset.reset_object_version_hash
WHERE reset.reset_sequence_number IS NULL OR reset.reset_sequence_number <= p.sequence_number
