-- Failures grouped by stage and reason code, most frequent first, with one example message.
CREATE OR REPLACE VIEW failures_by_reason AS
SELECT stage,
       reason,
       count(*) AS n_failures,
       count(DISTINCT shot_id) AS n_shots,
       min(message) AS example_message,
       max(time) AS last_time
FROM failures
GROUP BY stage, reason
ORDER BY n_failures DESC, stage, reason;
