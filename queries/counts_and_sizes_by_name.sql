-- How many current annotations each name has, and their total and largest payload sizes.
SELECT name, COUNT(*) AS annotations, SUM(size) AS total_bytes, MAX(size) AS largest_bytes
FROM annotations
GROUP BY name
ORDER BY annotations DESC, name
