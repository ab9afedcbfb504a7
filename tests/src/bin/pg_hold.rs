//! A helper of `tests/tests/pg_harness.rs`: holds the process's shared
//! PostgreSQL cluster and one of its own, prints their ports and
//! directories, then (argument `panic`) panics or (anything else) waits to
//! be killed — so the test can check that neither server outlives it.

use std::time::Duration;

use meshplane_tests::pg::{self, PgCluster};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let shared = pg::shared().expect("shared cluster");
    let owned = PgCluster::start().expect("owned cluster");
    println!(
        "CLUSTERS {} {} {} {}",
        shared.port(),
        shared.dir().display(),
        owned.port(),
        owned.dir().display()
    );
    match mode.as_str() {
        "panic" => panic!("a process fails while holding clusters"),
        _ => std::thread::sleep(Duration::from_secs(120)),
    }
}
