//! The SQL surface, grouped by what users do.

mod summaries;
