-- Values are stored as the exact JSON text that was hashed: jsonb normalises numbers (2.5e16 comes
-- back as 25000000000000000), which would make an untouched row fail verification.
ALTER TABLE audit_entries ALTER COLUMN previous_value TYPE text USING previous_value::text;
ALTER TABLE audit_entries ALTER COLUMN new_value TYPE text USING new_value::text;
