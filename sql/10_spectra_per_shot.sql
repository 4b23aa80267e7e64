-- Per-shot spectrum summary: channel count, total weight, weighted means.
CREATE OR REPLACE VIEW spectra_per_shot AS
SELECT shot_id,
       count(*) AS n_channels,
       sum(weight) AS total_weight,
       sum(weight * wavelength) / nullif(sum(weight), 0) AS mean_wavelength,
       sum(weight * energy) / nullif(sum(weight), 0) AS mean_energy,
       min(wavelength) AS min_wavelength,
       max(wavelength) AS max_wavelength
FROM spectra
GROUP BY shot_id;
