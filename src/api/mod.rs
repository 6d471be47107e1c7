//! The SQL surface, grouped by what users do.

// pgrx spells a result row as a tuple of named columns.
#[allow(clippy::type_complexity)]
mod archive;
#[allow(clippy::type_complexity)]
mod backups;
#[allow(clippy::type_complexity)]
mod check;
#[allow(clippy::type_complexity)]
mod cluster;
#[allow(clippy::type_complexity)]
mod dump_agents;
#[allow(clippy::type_complexity)]
mod summaries;
