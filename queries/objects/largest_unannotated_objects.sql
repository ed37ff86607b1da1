-- The 20 largest object versions (delete markers aside) that carry no annotation.
SELECT o.bucket, o.key, o.version_id, o.size, o.storage_class, o.last_modified_date
FROM objects o
WHERE NOT o.is_delete_marker
  AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.object_join_key = o.object_join_key)
ORDER BY o.size DESC, o.bucket, o.key, o.version_id
LIMIT 20
