"""Streaming entity resolution for contacts and companies: normalise, block, compare, score.

- ``normalize``: identifying properties to comparable features (emails, E.164 phones, names with
  nicknames, company names without legal suffixes, web domains, postal addresses);
- ``blocking``: the few keys under which a record is indexed, so each event is compared with a
  handful of candidates, never the whole CRM;
- ``compare``: agreement levels per field (missing values neither agree nor disagree);
- ``scoring``: Fellegi-Sunter weights per field and level, summed and mapped to a probability;
- ``survivorship``: which record survives a merge, and which value each field keeps;
- ``engine``: the finder that ties them together over an index (PostgreSQL or in memory).
"""
