//! The subcommands over the admin RPCs, one module per command group; the
//! helpers they share are here.

mod dns;
mod egress;
mod events;
mod extclient;
mod ingress;
mod key;
mod network;
mod node;
mod policy;
mod route;

use std::io::Write;

use crate::{
    Ctx, Failure,
    output::{self, Format, Named, Table},
};

pub use dns::DnsCmd;
pub use egress::EgressCmd;
pub use events::EventsCmd;
pub use extclient::ExtClientCmd;
pub use ingress::IngressCmd;
pub use key::KeyCmd;
pub use network::NetworkCmd;
pub use node::NodeCmd;
pub use policy::PolicyCmd;
pub use route::RouteCmd;

/// Prints items as a table or as a JSON/YAML array.
fn show_list<M: Named>(ctx: &Ctx, items: &[M], table: fn(&[M]) -> Table) {
    match ctx.format {
        Format::Table => table(items).print(),
        f => output::print_value(f, &output::list_json(items)),
    }
}

/// Prints one item as a one-row table or as a JSON/YAML object.
fn show_one<M: Named>(ctx: &Ctx, item: &M, table: fn(&[M]) -> Table) {
    match ctx.format {
        Format::Table => table(std::slice::from_ref(item)).print(),
        f => output::print_value(f, &output::to_json(item)),
    }
}

/// Confirms a deletion: a line in table mode, `{}` otherwise.
fn done(ctx: &Ctx, what: String) {
    match ctx.format {
        Format::Table => println!("{what}"),
        f => output::print_value(f, &serde_json::json!({})),
    }
}

/// Comma-separated values; an empty argument is an empty list.
fn csv(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Writes `text` to `path` with mode 0600 (replacing what is there).
pub fn write_private(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| Failure::Local(format!("writing {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    // An existing file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_lists_split_trim_and_drop_empties() {
        assert_eq!(
            csv(&["10.10.10.0/24, 0.0.0.0/0".into(), "::/0".into()]),
            ["10.10.10.0/24", "0.0.0.0/0", "::/0"]
        );
        assert!(csv(&["".into()]).is_empty());
    }
}
