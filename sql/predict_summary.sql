-- diffbragg integrate, the whole run: totals of predict_per_shot and the shots that failed.
CREATE OR REPLACE VIEW predict_summary AS
SELECT count(*) AS n_shots,
       coalesce(sum(n_pred), 0) AS n_pred,
       coalesce(sum(n_strong_pred), 0) AS n_strong_pred,
       coalesce(sum(n_weak_pred), 0) AS n_weak_pred,
       coalesce(sum(n_strong_spots), 0) AS n_strong_spots,
       coalesce(sum(n_strong_matched), 0) AS n_strong_matched,
       CAST(sum(n_strong_pred) AS DOUBLE) / nullif(sum(n_pred), 0) AS strong_fraction,
       CAST(sum(n_strong_matched) AS DOUBLE) / nullif(sum(n_strong_spots), 0) AS match_rate,
       median(median_match_distance) AS median_match_distance,
       (SELECT count(*) FROM failures WHERE stage = 'predict') AS n_failed
FROM predict_per_shot;
