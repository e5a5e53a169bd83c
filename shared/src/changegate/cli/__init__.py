"""The `changegate` command line: dev stack, demo feed, schemas, audit verification."""
