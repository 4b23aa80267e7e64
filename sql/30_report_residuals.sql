-- Stage-1 diagnostics over the `residuals` table (schemas/residuals.json), with the
-- definitions of src/report/stats.rs (cctbx.xfel detector_residuals):
--   RMSD = 1000*sqrt(mean(dx^2 + dy^2)) um, dx/dy = cal - obs in panel mm;
--   radial/transverse RMSD likewise from radial_mm / transverse_mm;
--   cc(dR,dpsi), cc(dT,dpsi): UNcentred sum(xy)/sqrt(sum(x^2)*sum(y^2)), NULL for n < 3;
--   CC(dpsi, d2theta): Pearson, d2theta = obs - cal, NULL for n < 2 or a zero variance;
--   delta-psi SD is the sample SD (n - 1); MAD = median |x - median| (unscaled).

-- Per model and panel.
CREATE OR REPLACE VIEW residuals_by_panel AS
SELECT model,
       panel,
       count(*) AS n,
       1000 * sqrt(avg(power(cal_x_mm - obs_x_mm, 2) + power(cal_y_mm - obs_y_mm, 2))) AS rmsd_um,
       1000 * sqrt(avg(radial_mm * radial_mm)) AS radial_rmsd_um,
       1000 * sqrt(avg(transverse_mm * transverse_mm)) AS transverse_rmsd_um,
       1000 * avg(radial_mm) AS mean_radial_um,
       1000 * avg(transverse_mm) AS mean_transverse_um,
       avg(delpsi_deg) AS delpsi_mean_deg,
       stddev_samp(delpsi_deg) AS delpsi_sd_deg,
       median(delpsi_deg) AS delpsi_median_deg,
       mad(delpsi_deg) AS delpsi_mad_deg,
       CASE WHEN count(*) >= 3 AND sum(radial_mm * radial_mm) > 0 AND sum(delpsi_deg * delpsi_deg) > 0
            THEN sum(radial_mm * delpsi_deg) / sqrt(sum(radial_mm * radial_mm) * sum(delpsi_deg * delpsi_deg))
       END AS cc_radial_delpsi,
       CASE WHEN count(*) >= 3 AND sum(transverse_mm * transverse_mm) > 0 AND sum(delpsi_deg * delpsi_deg) > 0
            THEN sum(transverse_mm * delpsi_deg) / sqrt(sum(transverse_mm * transverse_mm) * sum(delpsi_deg * delpsi_deg))
       END AS cc_transverse_delpsi,
       CASE WHEN count(*) >= 2 AND var_pop(delpsi_deg) > 0 AND var_pop(two_theta_obs_deg - two_theta_cal_deg) > 0
            THEN corr(delpsi_deg, two_theta_obs_deg - two_theta_cal_deg)
       END AS cc_delpsi_d2theta,
       count(*) FILTER (WHERE delpsi_deg > 0) AS n_delpsi_pos,
       count(*) FILTER (WHERE delpsi_deg < 0) AS n_delpsi_neg
FROM residuals
GROUP BY model, panel;

-- Per model and shot: per-image RMSD and the delta-psi sign balance
-- (detector_residuals pos_vs_neg_delta_psi; a healthy image has n_pos ~ n_neg).
CREATE OR REPLACE VIEW residuals_by_shot AS
SELECT model,
       shot_id,
       count(*) AS n,
       1000 * sqrt(avg(power(cal_x_mm - obs_x_mm, 2) + power(cal_y_mm - obs_y_mm, 2))) AS rmsd_um,
       avg(delpsi_deg) AS delpsi_mean_deg,
       count(*) FILTER (WHERE delpsi_deg > 0) AS n_delpsi_pos,
       count(*) FILTER (WHERE delpsi_deg < 0) AS n_delpsi_neg
FROM residuals
GROUP BY model, shot_id;

-- Per model, the whole dataset. Weighted RMSD: weights 1/obs_var_mm2 over rows
-- with a positive variance.
CREATE OR REPLACE VIEW residuals_dataset AS
SELECT model,
       count(*) AS n,
       count(DISTINCT shot_id) AS n_shots,
       1000 * sqrt(avg(power(cal_x_mm - obs_x_mm, 2) + power(cal_y_mm - obs_y_mm, 2))) AS rmsd_um,
       1000 * sqrt(sum((power(cal_x_mm - obs_x_mm, 2) + power(cal_y_mm - obs_y_mm, 2)) / obs_var_mm2)
                        FILTER (WHERE obs_var_mm2 > 0 AND isfinite(obs_var_mm2))
                   / sum(1 / obs_var_mm2) FILTER (WHERE obs_var_mm2 > 0 AND isfinite(obs_var_mm2))) AS weighted_rmsd_um,
       count(*) FILTER (WHERE obs_var_mm2 > 0 AND isfinite(obs_var_mm2)) AS n_weighted,
       1000 * sqrt(avg(radial_mm * radial_mm)) AS radial_rmsd_um,
       1000 * sqrt(avg(transverse_mm * transverse_mm)) AS transverse_rmsd_um,
       avg(delpsi_deg) AS delpsi_mean_deg,
       stddev_samp(delpsi_deg) AS delpsi_sd_deg,
       median(delpsi_deg) AS delpsi_median_deg,
       mad(delpsi_deg) AS delpsi_mad_deg,
       CASE WHEN count(*) >= 3 AND sum(radial_mm * radial_mm) > 0 AND sum(delpsi_deg * delpsi_deg) > 0
            THEN sum(radial_mm * delpsi_deg) / sqrt(sum(radial_mm * radial_mm) * sum(delpsi_deg * delpsi_deg))
       END AS cc_radial_delpsi,
       CASE WHEN count(*) >= 3 AND sum(transverse_mm * transverse_mm) > 0 AND sum(delpsi_deg * delpsi_deg) > 0
            THEN sum(transverse_mm * delpsi_deg) / sqrt(sum(transverse_mm * transverse_mm) * sum(delpsi_deg * delpsi_deg))
       END AS cc_transverse_delpsi,
       count(*) FILTER (WHERE delpsi_deg > 0) AS n_delpsi_pos,
       count(*) FILTER (WHERE delpsi_deg < 0) AS n_delpsi_neg
FROM residuals
GROUP BY model;

-- Before vs after per panel, over the reflections evaluated with both models
-- (paired on shot_id, refl_id), as in report::summary::Comparison.
CREATE OR REPLACE VIEW residuals_panel_comparison AS
WITH paired AS (
    SELECT r.*
    FROM residuals r
    WHERE EXISTS (SELECT 1 FROM residuals o
                  WHERE o.shot_id = r.shot_id AND o.refl_id = r.refl_id AND o.model <> r.model)
),
s AS (
    SELECT model,
           panel,
           count(*) AS n,
           1000 * sqrt(avg(power(cal_x_mm - obs_x_mm, 2) + power(cal_y_mm - obs_y_mm, 2))) AS rmsd_um,
           1000 * sqrt(avg(radial_mm * radial_mm)) AS radial_rmsd_um,
           1000 * sqrt(avg(transverse_mm * transverse_mm)) AS transverse_rmsd_um,
           avg(delpsi_deg) AS delpsi_mean_deg,
           stddev_samp(delpsi_deg) AS delpsi_sd_deg,
           median(delpsi_deg) AS delpsi_median_deg,
           mad(delpsi_deg) AS delpsi_mad_deg
    FROM paired
    GROUP BY model, panel
)
SELECT i.panel,
       i.n,
       i.rmsd_um AS rmsd_um_input,
       f.rmsd_um AS rmsd_um_refined,
       i.radial_rmsd_um AS radial_rmsd_um_input,
       f.radial_rmsd_um AS radial_rmsd_um_refined,
       i.transverse_rmsd_um AS transverse_rmsd_um_input,
       f.transverse_rmsd_um AS transverse_rmsd_um_refined,
       i.delpsi_mean_deg AS delpsi_mean_deg_input,
       f.delpsi_mean_deg AS delpsi_mean_deg_refined,
       i.delpsi_sd_deg AS delpsi_sd_deg_input,
       f.delpsi_sd_deg AS delpsi_sd_deg_refined,
       i.delpsi_median_deg AS delpsi_median_deg_input,
       f.delpsi_median_deg AS delpsi_median_deg_refined,
       i.delpsi_mad_deg AS delpsi_mad_deg_input,
       f.delpsi_mad_deg AS delpsi_mad_deg_refined
FROM s i
JOIN s f ON f.panel = i.panel AND f.model = 'refined'
WHERE i.model = 'input';
