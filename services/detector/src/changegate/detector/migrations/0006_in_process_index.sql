-- The blocking index moved into the detector's memory (rebuilt from detector_records at start).
DROP TABLE IF EXISTS detector_blocking;
