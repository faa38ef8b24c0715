-- Consumers prune their processed-event records past a retention (ConsumerSpec.retention);
-- this index makes that a range scan instead of a pass over every consumer's records.
CREATE INDEX processed_events_by_age ON processed_events (consumer, processed_at);
