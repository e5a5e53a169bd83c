-- Records by owner (for a deactivated owner's records), on HubSpot's owner property.
CREATE INDEX IF NOT EXISTS detector_records_owner
    ON detector_records (object_type, (properties->>'hubspot_owner_id')) WHERE NOT deleted;
