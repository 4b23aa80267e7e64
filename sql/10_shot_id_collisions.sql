-- shot_ids claimed by more than one (exp_name, exp_idx). Expected to stay empty: a 63-bit hash
-- collision needs about 3.6e9 shots to reach a 50 % chance (src/store/shot_id.rs).
CREATE OR REPLACE VIEW shot_id_collisions AS
SELECT shot_id,
       count(DISTINCT exp_name || '#' || CAST(exp_idx AS VARCHAR)) AS n_sources,
       list(DISTINCT exp_name || '#' || CAST(exp_idx AS VARCHAR)) AS sources
FROM experiments
GROUP BY shot_id
HAVING count(DISTINCT exp_name || '#' || CAST(exp_idx AS VARCHAR)) > 1;
