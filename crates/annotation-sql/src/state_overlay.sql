-- annotations inside annotable while the state table is behind the journal: the state table,
-- with the object versions that journal rows committed since its watermark touch folded again
-- from (their state rows as PUTs, their tombstones, those journal rows) by the rule of
-- queries/views/annotations.sql. The unfolded rows are few (a refresh runs every few seconds),
-- so the fold is small; every other state row passes through untouched.
--
-- Folding is idempotent: if a refresh commits while this runs, the state already holds some
-- of these rows, and folding them again changes nothing. A state row and the journal row it
-- came from are the same observation (same sequence_number and content), hence the DISTINCT.
WITH affected AS (
    SELECT DISTINCT bucket AS a_bucket, object_key AS a_object_key,
           COALESCE(object_version_id, '') AS a_version
    FROM annotations_unfolded
),
facts AS (
    SELECT s.bucket, s.object_key, s.object_version_id, s.object_join_key, s.name,
           'PUT' AS record_type, s.sequence_number, s.last_modified_date, s.size, s.e_tag,
           s.checksum_algorithm, s.replication_status, s.text_value
    FROM affected a
    JOIN annotations_state s
      ON  s.bucket = a.a_bucket AND s.object_key = a.a_object_key
      AND COALESCE(s.object_version_id, '') = a.a_version
    UNION ALL
    SELECT t.bucket, t.object_key, t.object_version_id, t.object_join_key, t.name,
           t.record_type, t.sequence_number,
           arrow_cast(NULL, 'Timestamp(Microsecond, None)') AS last_modified_date,
           arrow_cast(NULL, 'Int64') AS size, arrow_cast(NULL, 'Utf8') AS e_tag,
           arrow_cast(NULL, 'Utf8') AS checksum_algorithm,
           arrow_cast(NULL, 'Utf8') AS replication_status, arrow_cast(NULL, 'Utf8') AS text_value
    FROM affected a
    JOIN annotations_tombstones t
      ON  t.bucket = a.a_bucket AND t.object_key = a.a_object_key
      AND COALESCE(t.object_version_id, '') = a.a_version
    UNION ALL
    SELECT bucket, object_key, object_version_id, object_join_key, name, record_type,
           sequence_number, last_modified_date, size, e_tag, checksum_algorithm,
           replication_status, text_value
    FROM annotations_unfolded
),
latest AS (
    SELECT bucket AS l_bucket, object_key AS l_object_key,
           COALESCE(object_version_id, '') AS l_version, name AS l_name,
           MAX(sequence_number) AS l_sequence_number
    FROM facts
    WHERE name IS NOT NULL
    GROUP BY bucket, object_key, COALESCE(object_version_id, ''), name
),
reset AS (
    SELECT bucket AS r_bucket, object_key AS r_object_key,
           COALESCE(object_version_id, '') AS r_version,
           MAX(sequence_number) AS r_sequence_number
    FROM facts
    WHERE record_type = 'OBJECT_RESET'
    GROUP BY bucket, object_key, COALESCE(object_version_id, '')
),
folded AS (
    SELECT DISTINCT f.bucket, f.object_key, f.object_version_id, f.object_join_key, f.name,
           f.sequence_number, f.last_modified_date, f.size, f.e_tag, f.checksum_algorithm,
           f.replication_status, f.text_value
    FROM facts f
    JOIN latest l
      ON  f.bucket = l.l_bucket AND f.object_key = l.l_object_key
      AND COALESCE(f.object_version_id, '') = l.l_version AND f.name = l.l_name
      AND f.sequence_number = l.l_sequence_number
    LEFT JOIN reset r
      ON  f.bucket = r.r_bucket AND f.object_key = r.r_object_key
      AND COALESCE(f.object_version_id, '') = r.r_version
    WHERE f.record_type = 'PUT'
      AND (r.r_sequence_number IS NULL OR r.r_sequence_number <= f.sequence_number)
)
SELECT s.bucket, s.object_key, s.object_version_id, s.object_join_key, s.name,
       s.sequence_number, s.last_modified_date, s.size, s.e_tag, s.checksum_algorithm,
       s.replication_status, s.text_value
FROM annotations_state s
WHERE NOT EXISTS (
    SELECT 1 FROM affected a
    WHERE a.a_bucket = s.bucket AND a.a_object_key = s.object_key
      AND a.a_version = COALESCE(s.object_version_id, '')
)
UNION ALL
SELECT * FROM folded
