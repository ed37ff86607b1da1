-- objects: every object version annotable has seen and S3 still holds (delete markers
-- included), with the columns of AWS S3 Metadata's live inventory table that listings can
-- fill, derived from the append-only object_journal (docs/objects.md).
--
-- Rule: for each object version (object_join_key, which stands for bucket, key and version id
-- or null) take the PUT with the largest sequence_number; the version exists unless a
-- KEY_RESET of its key has a strictly larger sequence_number (a key listing writes its
-- KEY_RESET and a PUT per version with one sequence_number, so those PUTs survive it).
--
-- Portable SQL, as annotations.sql: a group-by and joins, no window. Every column of `latest`
-- and `reset` has a name of its own, for the DataFusion pushdown bug annotations.sql describes.
-- object_tags and user_metadata are not columns: no listing or event carries them.
CREATE VIEW objects AS
WITH latest AS (
    SELECT bucket AS latest_bucket,
           object_join_key AS latest_object_join_key,
           MAX(sequence_number) AS latest_sequence_number
    FROM object_journal
    WHERE record_type = 'PUT'
    GROUP BY bucket, object_join_key
),
reset AS (
    SELECT bucket AS reset_bucket,
           key AS reset_key,
           MAX(sequence_number) AS reset_sequence_number
    FROM object_journal
    WHERE record_type = 'KEY_RESET'
    GROUP BY bucket, key
),
current_put AS (
    SELECT j.bucket, j.key, j.sequence_number, j.version_id, j.is_delete_marker, j.size,
           j.last_modified_date, j.e_tag, j.storage_class, j.is_multipart,
           j.encryption_status, j.is_bucket_key_enabled, j.kms_key_arn,
           j.checksum_algorithm, j.object_join_key
    FROM latest
    JOIN object_journal j
      ON  j.bucket = latest.latest_bucket
      AND j.object_join_key = latest.latest_object_join_key
      AND j.sequence_number = latest.latest_sequence_number
    WHERE j.record_type = 'PUT'
)
SELECT
    p.bucket,
    p.key,
    p.sequence_number,
    p.version_id,
    p.is_delete_marker,
    p.size,
    p.last_modified_date,
    p.e_tag,
    p.storage_class,
    p.is_multipart,
    p.encryption_status,
    p.is_bucket_key_enabled,
    p.kms_key_arn,
    p.checksum_algorithm,
    p.object_join_key
FROM reset
RIGHT JOIN current_put p
  ON  p.bucket = reset.reset_bucket
  AND p.key = reset.reset_key
WHERE reset.reset_sequence_number IS NULL OR reset.reset_sequence_number <= p.sequence_number
