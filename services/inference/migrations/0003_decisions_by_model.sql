-- A decision id names one decision of one model: two policies asked about one application
-- under the application's id each keep their decision (before, the second model's rows were
-- dropped and its rewards joined the first model's decisions). An outcome names a decision
-- id, not a model: it joins every model's decision of that id (each judged on its own
-- window). Tables are rewritten under an exclusive lock: small here (sampled decisions of
-- policies), run at deploy time like the other migrations.
ALTER TABLE rewards ADD COLUMN model_name text;
UPDATE rewards r SET model_name = d.model_name FROM decisions d WHERE d.decision_id = r.decision_id;
ALTER TABLE rewards ALTER COLUMN model_name SET NOT NULL;
ALTER TABLE rewards DROP CONSTRAINT rewards_decision_id_fkey;
ALTER TABLE rewards DROP CONSTRAINT rewards_pkey;
ALTER TABLE decisions DROP CONSTRAINT decisions_pkey;
ALTER TABLE decisions ADD PRIMARY KEY (model_name, decision_id);
ALTER TABLE rewards ADD PRIMARY KEY (model_name, decision_id, definition, definition_version);
ALTER TABLE rewards ADD FOREIGN KEY (model_name, decision_id)
    REFERENCES decisions (model_name, decision_id);
-- The outcome join looks decisions up by id alone.
CREATE INDEX decisions_by_id ON decisions (decision_id);
