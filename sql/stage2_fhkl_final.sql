-- Stage-2 final structure factors of each run, with the starting intensity and the refined scale.
CREATE OR REPLACE VIEW stage2_fhkl_final AS
SELECT tag,
       hkl.h AS h,
       hkl.k AS k,
       hkl.l AS l,
       channel,
       d,
       F,
       sigma_F,
       I,
       sigma_I,
       I_init,
       scale,
       multiplicity,
       iteration AS n_evals
FROM fhkl
WHERE is_final
ORDER BY tag, channel, d DESC;
