-- Every annotation change (put, delete, object reset) recorded in the last hour, newest first.
SELECT ingested_at, record_type, bucket, object_key, object_version_id, name, event_name
FROM annotation_journal
WHERE ingested_at >= now() - INTERVAL '1' HOUR
ORDER BY ingested_at DESC, sequence_number DESC
