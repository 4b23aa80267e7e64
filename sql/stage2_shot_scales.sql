-- Per shot: the scale G from stage 1 and after each stage-2 run (stage = the run's tag), with its σ.
CREATE OR REPLACE VIEW stage2_shot_scales AS
SELECT s2.stage AS tag,
       s2.shot_id,
       s2.exp_name,
       s2.exp_idx,
       s2.spot_scales_init AS g_start,
       s2.spot_scales AS g,
       s2.sigma_spot_scales AS sigma_g,
       s2.spot_scales / s2.spot_scales_init AS g_ratio,
       s2.sigz,
       s2.status
FROM shot_params s2
WHERE s2.stage NOT IN ('stage1') AND s2.iteration IS NULL AND s2.spot_scales_init IS NOT NULL
ORDER BY tag, shot_id;
