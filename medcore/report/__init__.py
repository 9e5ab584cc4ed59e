"""The book's tables, figures and pages: records (tables from run records), plots, book (shown values),
the report pages (intro, study, perf, run), the numbered notebooks' helpers (notebook, data_tables)."""
