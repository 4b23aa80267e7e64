-- Stage 1: one line per refined shot with its convergence (shot_params + traces).
-- f_start/f_end: target at the first/last evaluation; n_traced counts traces rows.
CREATE OR REPLACE VIEW stage1_convergence AS
WITH t AS (
    SELECT shot_id,
           count(*) AS n_traced,
           arg_min(f, eval) AS f_start,
           arg_max(f, eval) AS f_end,
           arg_max(sigz, eval) AS sigz_end,
           max(time) AS fit_time_s
    FROM traces
    WHERE stage = 'stage1'
    GROUP BY shot_id
)
SELECT p.shot_id,
       p.exp_name,
       p.exp_idx,
       p.status,
       p.n_evals,
       t.n_traced,
       t.f_start,
       t.f_end,
       p.sigz,
       p.wall_time_s,
       t.fit_time_s,
       p.spot_scales,
       p.ncells,
       p.a, p.b, p.c, p.al, p.be, p.ga
FROM shot_params p
LEFT JOIN t USING (shot_id)
WHERE p.stage = 'stage1' AND p.iteration IS NULL;
