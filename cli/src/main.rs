//! `meshctl`, the meshplane command line. Its subcommands land with the CLI
//! issue; until then it says so.

fn main() {
    eprintln!("meshctl: not implemented yet; use grpcurl (see README.md)");
    std::process::exit(2);
}
