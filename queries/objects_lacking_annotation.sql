-- Annotated object versions that have no "owner" annotation.
SELECT DISTINCT a.bucket, a.object_key, a.object_version_id
FROM annotations a
WHERE NOT EXISTS (
    SELECT 1 FROM annotations o
    WHERE o.name = 'owner'
      AND o.bucket = a.bucket
      AND o.object_key = a.object_key
      AND COALESCE(o.object_version_id, '') = COALESCE(a.object_version_id, '')
)
ORDER BY a.bucket, a.object_key, a.object_version_id
