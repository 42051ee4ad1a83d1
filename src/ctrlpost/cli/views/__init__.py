"""One module per command's terminal output (tables, progress bars, summaries)."""
