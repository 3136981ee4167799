"""The stored-data half of the explorer: every page that reads the database (and never the
model), the page data, its presentation and the database reads that are the pages' own."""
