-- Stage-2 convergence: one line per target evaluation of each run (tag = the run's --saveTag).
CREATE OR REPLACE VIEW stage2_convergence AS
SELECT stage AS tag,
       eval,
       f,
       sigz,
       grad_norm,
       time
FROM traces
WHERE shot_id IS NULL
ORDER BY tag, eval;
