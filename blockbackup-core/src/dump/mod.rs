//! Dumps taken by agents: the checked pg_dump request ([`request`]) and the
//! supervised pg_dump process with its output in the repository
//! ([`process`]).

pub mod process;
pub mod request;
pub mod stream;
