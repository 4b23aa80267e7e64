-- One line per imported shot: source, reflection and channel counts, last stage-1 status, failures.
CREATE OR REPLACE VIEW shot_summary AS
SELECT e.shot_id,
       e.exp_name,
       e.exp_idx,
       e.image_file,
       e.image_index,
       coalesce(r.n_refl, 0) AS n_refl,
       coalesce(r.n_indexed, 0) AS n_indexed,
       coalesce(r.n_strong, 0) AS n_strong,
       coalesce(s.n_channels, 0) AS n_channels,
       p.status AS stage1_status,
       p.sigz AS stage1_sigz,
       (SELECT count(*) FROM failures f WHERE f.shot_id = e.shot_id) AS n_failures
FROM experiments e
LEFT JOIN reflections_per_shot r USING (shot_id)
LEFT JOIN spectra_per_shot s USING (shot_id)
LEFT JOIN (SELECT shot_id, status, sigz FROM shot_params WHERE stage = 'stage1' AND iteration IS NULL) p USING (shot_id);
