//! Starts a throwaway PostgreSQL server (see `meshplane_tests::pg`), prints
//! its admin URL on the first line of standard output, and stops it (and
//! removes its directory) when standard input closes. `tests/run` holds one
//! for the whole run and hands its URL to the tests in
//! `MESHPLANE_TEST_PG_URL`, so each test creates a database on it instead of
//! starting a server of its own.

use std::io::{Read, Write};

fn main() -> std::process::ExitCode {
    let cluster = match meshplane_tests::pg::PgCluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgcluster: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", cluster.url("postgres"));
    let _ = out.flush();
    // Until whoever started us closes our standard input.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
    std::process::ExitCode::SUCCESS
}
