"""Reports and tables: docs/RESULTS.md sections, the CSV writer, names from users as plain text."""
