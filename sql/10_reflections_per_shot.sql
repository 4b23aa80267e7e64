-- Reflection counts per shot. Flag bits (formats.md 2.5): Indexed = 4, Strong = 32.
CREATE OR REPLACE VIEW reflections_per_shot AS
SELECT shot_id,
       count(*) AS n_refl,
       count(*) FILTER (WHERE (flags & 4) <> 0) AS n_indexed,
       count(*) FILTER (WHERE (flags & 32) <> 0) AS n_strong,
       count(DISTINCT panel) AS n_panels
FROM reflections
GROUP BY shot_id;
