-- Where and how urgently a proposal is reviewed, who asked for review, and when it expires.
ALTER TABLE review_queue
    ADD COLUMN IF NOT EXISTS queue       text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS priority    text NOT NULL DEFAULT 'normal'
        CHECK (priority IN ('low', 'normal', 'high')),
    ADD COLUMN IF NOT EXISTS expires_at  timestamptz,
    ADD COLUMN IF NOT EXISTS routed_by   jsonb,
    ADD COLUMN IF NOT EXISTS explanation text;
CREATE INDEX IF NOT EXISTS review_queue_expiry ON review_queue (expires_at) WHERE status = 'pending';
