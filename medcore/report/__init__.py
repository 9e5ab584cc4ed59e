"""The book's tables, figures and pages: records (tables from run records), position_metrics (the position-robust
metrics across records), figure (what every figure shares), plots and plots_accuracy (the numbered notebooks'
figures), plots_report (the report pages' figures), book (shown values), the report pages (intro, study, perf, run),
the numbered notebooks' helpers (notebook, data_tables)."""
