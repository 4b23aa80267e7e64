-- diffbragg integrate: the strong predictions and their distance to the matched strong spot, in
-- the units of predictions.qcut (Å⁻¹ for label_weak_col=rlp, pixels for xyzobs.px.value).
-- A distribution piled up against qcut means qcut is too small; one far below it means matches
-- are clean and qcut could shrink.
CREATE OR REPLACE VIEW predict_match_distances AS
SELECT shot_id,
       pred_id,
       panel,
       miller_index,
       d,
       scatter,
       match_distance,
       matched_refl_id
FROM predictions
WHERE is_strong;
