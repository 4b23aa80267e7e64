-- Stage 1 over the whole run: shot counts by status, medians of the refined
-- model and of the cost, and how many shots failed (see failures_by_reason).
CREATE OR REPLACE VIEW stage1_summary AS
SELECT count(*) AS n_refined,
       count(*) FILTER (WHERE status LIKE 'converged%') AS n_converged,
       (SELECT count(*) FROM failures WHERE stage = 'stage1') AS n_failed,
       median(n_evals) AS median_evals,
       median(wall_time_s) AS median_wall_s,
       sum(wall_time_s) AS total_wall_s,
       median(sigz) AS median_sigz,
       median(spot_scales) AS median_G,
       median(ncells[1]) AS median_Na,
       median(ncells[2]) AS median_Nb,
       median(ncells[3]) AS median_Nc,
       median(a) AS median_a, median(b) AS median_b, median(c) AS median_c,
       median(al) AS median_al, median(be) AS median_be, median(ga) AS median_ga,
       median(sqrt(sigma_rot[1]*sigma_rot[1] + sigma_rot[2]*sigma_rot[2] + sigma_rot[3]*sigma_rot[3])) * 180 / pi()
           AS median_sigma_orientation_deg
FROM shot_params
WHERE stage = 'stage1' AND iteration IS NULL;
