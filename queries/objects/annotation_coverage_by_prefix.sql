-- Per bucket and top-level prefix (the key up to its first '/'): object versions (delete
-- markers aside), how many carry at least one annotation, and the share.
WITH annotated AS (
    SELECT DISTINCT object_join_key AS annotated_join_key FROM annotations
),
versions AS (
    SELECT o.bucket,
           split_part(o.key, '/', 1) AS prefix,
           CASE WHEN x.annotated_join_key IS NULL THEN 0 ELSE 1 END AS annotated
    FROM objects o
    LEFT JOIN annotated x ON x.annotated_join_key = o.object_join_key
    WHERE NOT o.is_delete_marker
)
SELECT bucket,
       prefix,
       count(*) AS versions,
       sum(annotated) AS annotated,
       round(100.0 * sum(annotated) / count(*), 1) AS percent_annotated
FROM versions
GROUP BY bucket, prefix
ORDER BY bucket, prefix
