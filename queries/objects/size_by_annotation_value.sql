-- Bytes stored per value of the "color" annotation: object versions and their total size.
SELECT a.text_value AS color,
       count(*) AS versions,
       sum(o.size) AS bytes
FROM annotations a
JOIN objects o ON o.object_join_key = a.object_join_key
WHERE a.name = 'color'
GROUP BY a.text_value
ORDER BY bytes DESC, color
