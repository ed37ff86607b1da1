-- The full annotation history of one object (every version), oldest first.
SELECT sequence_number, record_type, object_version_id, name, size, text_value, event_name, source
FROM annotation_journal
WHERE bucket = 'photos' AND object_key = 'cats/tom.jpg'
ORDER BY sequence_number, record_type DESC, name
