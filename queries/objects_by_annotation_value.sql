-- Objects whose "review" annotation (a JSON document) has status "approved".
SELECT bucket, object_key, object_version_id, json_get_str(text_value, 'reviewer') AS reviewer
FROM annotations
WHERE name = 'review' AND json_get_str(text_value, 'status') = 'approved'
ORDER BY bucket, object_key
