-- This registry database's identity. The orphan-blob collector writes it into the artifact
-- root it collects and refuses a root another registry database already claimed: blobs only
-- that database's versions reference would look orphaned here (app/blob_collection.py).
CREATE TABLE registry_identity (
    id        uuid    NOT NULL DEFAULT gen_random_uuid(),
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO registry_identity DEFAULT VALUES;
