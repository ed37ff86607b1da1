-- The objects carrying the most annotations right now.
SELECT bucket, object_key, object_version_id, COUNT(*) AS annotations
FROM annotations
GROUP BY bucket, object_key, object_version_id
ORDER BY annotations DESC, bucket, object_key
LIMIT 20
