-- diffbragg integrate, per shot: the predictions kept (strong = matched by a strong spot, weak =
-- the brightest weak_fraction of the others) against the strong spots found on the data (the
-- `reflections` of an integrate output folder; flag Indexed = 4 marks the matched ones).
-- Tuning: threshold sets n_pred, qcut moves predictions between weak and strong (match_rate),
-- weak_fraction sets n_weak_pred.
CREATE OR REPLACE VIEW predict_per_shot AS
WITH p AS (
    SELECT shot_id,
           count(*) AS n_pred,
           count(*) FILTER (WHERE is_strong) AS n_strong_pred,
           count(*) FILTER (WHERE NOT is_strong) AS n_weak_pred,
           median(match_distance) AS median_match_distance,
           max(match_distance) AS max_match_distance,
           median(d) AS median_d
    FROM predictions
    GROUP BY shot_id
), s AS (
    SELECT shot_id,
           count(*) AS n_strong_spots,
           count(*) FILTER (WHERE (flags & 4) <> 0) AS n_strong_matched
    FROM reflections
    GROUP BY shot_id
)
SELECT p.shot_id,
       p.n_pred,
       p.n_strong_pred,
       p.n_weak_pred,
       coalesce(s.n_strong_spots, 0) AS n_strong_spots,
       coalesce(s.n_strong_matched, 0) AS n_strong_matched,
       CAST(p.n_strong_pred AS DOUBLE) / p.n_pred AS strong_fraction,
       CAST(s.n_strong_matched AS DOUBLE) / nullif(s.n_strong_spots, 0) AS match_rate,
       p.median_match_distance,
       p.max_match_distance,
       p.median_d
FROM p
LEFT JOIN s USING (shot_id);
