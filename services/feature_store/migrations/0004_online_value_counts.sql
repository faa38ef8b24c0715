-- How many values each online row holds, so a read can hand a row on whole when it
-- has every feature of its view, without parsing it (0: not recorded).
ALTER TABLE online_values ADD COLUMN features integer NOT NULL DEFAULT 0;
