-- API tokens are written by the owner's connection only (`changegate tokens`). The services that
-- authenticate them read them and may record a token's last use, through this function, which
-- changes nothing else and only ever to now().
CREATE OR REPLACE FUNCTION changegate_token_used(token_id text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE public.changegate_api_tokens SET last_used_at = now()
    WHERE id = token_id AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
$$;
REVOKE ALL ON FUNCTION changegate_token_used(text) FROM PUBLIC;
