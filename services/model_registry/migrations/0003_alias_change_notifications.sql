-- Registry processes keep resolved aliases in memory (app/alias_cache.py); every change to
-- an alias row tells them which one to forget, and a TRUNCATE (a projection rebuild) to
-- forget all. Delivered at commit, to every process listening on this database.
CREATE FUNCTION notify_alias_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('lathe_model_registry_aliases', '');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('lathe_model_registry_aliases',
                          json_build_array(OLD.model_name, OLD.alias)::text);
    ELSE
        PERFORM pg_notify('lathe_model_registry_aliases',
                          json_build_array(NEW.model_name, NEW.alias)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE ON aliases
    FOR EACH ROW EXECUTE FUNCTION notify_alias_changed();
CREATE TRIGGER aliases_truncated AFTER TRUNCATE ON aliases
    FOR EACH STATEMENT EXECUTE FUNCTION notify_alias_changed();
