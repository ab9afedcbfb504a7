//! How results are printed: `-o json` and `-o yaml` render the generated
//! messages as proto3 JSON (lowerCamelCase names, as grpcurl prints them,
//! with default values included and 64-bit integers as numbers); `-o table`
//! prints tables that fit the terminal.

use std::{io::IsTerminal, sync::OnceLock};

use clap::ValueEnum;
use meshplane_sdk::proto as pb;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns that fit the terminal.
    Table,
    /// Proto3 JSON.
    Json,
    /// The same data as YAML.
    Yaml,
}

/// A generated message type and its full proto name.
pub trait Named: prost::Message + Sized {
    /// E.g. `meshplane.v1.Network`.
    const NAME: &'static str;
}

macro_rules! named {
    ($($t:ident),* $(,)?) => {
        $(impl Named for pb::$t {
            const NAME: &'static str = concat!("meshplane.v1.", stringify!($t));
        })*
    };
}

named!(
    Network,
    EnrollmentKey,
    Node,
    NodeConfig,
    ExtClient,
    GetExtClientConfigResponse,
    DnsEntry,
    ExplainRouteResponse,
    Event,
    GetHostsFileResponse,
);

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(meshplane_sdk::FILE_DESCRIPTOR_SET)
            .expect("the SDK's descriptor set decodes")
    })
}

/// A message as proto3 JSON.
pub fn to_json<M: Named>(m: &M) -> Value {
    let desc = pool()
        .get_message_by_name(M::NAME)
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::NAME));
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    let opts = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("messages serialize to JSON")
}

/// Messages as a JSON array.
pub fn list_json<M: Named>(items: &[M]) -> Value {
    Value::Array(items.iter().map(to_json).collect())
}

/// Prints a JSON value as JSON or YAML.
pub fn print_value(format: Format, v: &Value) {
    match format {
        Format::Yaml => print!("{}", yaml(v)),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON values serialize")
        ),
    }
}

/// A JSON value as a YAML document (block style; strings double-quoted, or
/// literal blocks when they span lines).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => yaml_seq(&mut out, a, 0),
        other => {
            out.push_str(&yaml_scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::String(s) if s.contains('\n') && !s.contains('\r') => {
            let pad = " ".repeat(indent + 2);
            let chomp = if s.ends_with('\n') { "" } else { "-" };
            let mut out = format!("|{chomp}");
            for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
                out.push('\n');
                if !line.is_empty() {
                    out.push_str(&pad);
                    out.push_str(line);
                }
            }
            out
        }
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        // JSON strings are valid YAML double-quoted scalars.
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn yaml_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        out.push_str(&pad);
        const RESERVED: [&str; 9] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
        let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !RESERVED.contains(&k.to_ascii_lowercase().as_str());
        if plain {
            out.push_str(k);
        } else {
            out.push_str(&Value::String(k.clone()).to_string());
        }
        out.push(':');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_map(out, inner, indent + 2);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                yaml_seq(out, a, indent + 2);
            }
            _ => {
                out.push(' ');
                out.push_str(&yaml_scalar(v, indent));
                out.push('\n');
            }
        }
    }
}

fn yaml_seq(out: &mut String, a: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    for v in a {
        out.push_str(&pad);
        out.push('-');
        if is_block(v) {
            // Nested blocks start on the next line, indented.
            out.push('\n');
            match v {
                Value::Object(m) => yaml_map(out, m, indent + 2),
                Value::Array(inner) => yaml_seq(out, inner, indent + 2),
                _ => unreachable!(),
            }
        } else {
            out.push(' ');
            out.push_str(&yaml_scalar(v, indent));
            out.push('\n');
        }
    }
}

/// Spaces between columns.
const GAP: usize = 2;

/// Columns of the terminal stdout is, when it is one.
fn term_width() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(c);
    }
    if !std::io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return Some(ws.ws_col as usize);
        }
    }
    None
}

/// A table: headers, rows, the columns never shortened (ids) and those left
/// out first when the terminal is too narrow.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    keep: Vec<bool>,
    optional: Vec<bool>,
}

impl Table {
    /// A table with these headers. A header starting with `=` marks a column
    /// that is never shortened, one starting with `?` a column left out
    /// (rightmost first) when shortening is not enough; the marks are not
    /// printed.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            keep: headers.iter().map(|h| h.starts_with('=')).collect(),
            optional: headers.iter().map(|h| h.starts_with('?')).collect(),
            headers: headers
                .iter()
                .map(|h| h.trim_start_matches(['=', '?']))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Column widths for the columns `cols` within `max`: the widest
    /// shortenable columns are cut until they fit or reach their header's
    /// width (at least 6). Also says whether they fit.
    fn widths(&self, cols: &[usize], max: Option<usize>) -> (Vec<usize>, bool) {
        let len = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = cols
            .iter()
            .map(|&i| {
                self.rows
                    .iter()
                    .map(|r| len(&r[i]))
                    .chain([len(self.headers[i])])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(max) = max else {
            return (widths, true);
        };
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
        while total(&widths) > max {
            let cut = (0..cols.len())
                .filter(|&j| {
                    let i = cols[j];
                    !self.keep[i] && widths[j] > len(self.headers[i]).max(6)
                })
                .max_by_key(|&j| widths[j]);
            match cut {
                Some(j) => widths[j] -= 1,
                None => return (widths, false),
            }
        }
        (widths, true)
    }

    /// The table as text fitting `width` columns when given.
    pub fn render(&self, width: Option<usize>) -> String {
        // Leave out optional columns (rightmost first) until the rest fit
        // uncut or none is left; then cut the widest.
        let mut cols: Vec<usize> = (0..self.headers.len()).collect();
        while width.is_some_and(|max| {
            let (w, _) = self.widths(&cols, None);
            w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1) > max
        }) {
            match cols.iter().rposition(|&i| self.optional[i]) {
                Some(j) => {
                    cols.remove(j);
                }
                None => break,
            }
        }
        let (widths, _) = self.widths(&cols, width);
        let len = |s: &str| s.chars().count();
        let fit = |s: &str, w: usize| -> String {
            if len(s) <= w {
                format!("{s:<w$}")
            } else {
                let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
                t.push('…');
                t
            }
        };
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(self.rows.iter()) {
            let line: Vec<String> = cols
                .iter()
                .zip(&widths)
                .map(|(&i, &w)| fit(&cells[i], w))
                .collect();
            out.push_str(line.join(&" ".repeat(GAP)).trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to fit the terminal.
    pub fn print(&self) {
        print!("{}", self.render(term_width()));
    }
}

/// A timestamp as RFC 3339 (UTC, seconds), or `-`.
pub fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A list joined by `,`, or `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `s`, or `-` when empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_camel_case_names_and_keeps_defaults() {
        let v = to_json(&pb::Node {
            id: "n1".into(),
            applied_revision: 7,
            egress: Some(pb::EgressGateway {
                ranges: vec!["10.10.10.0/24".into()],
                interface: "eth2".into(),
                nat_enabled: false,
            }),
            ..Default::default()
        });
        assert_eq!(v["id"], "n1");
        assert_eq!(v["appliedRevision"], 7);
        assert_eq!(v["egress"]["natEnabled"], false);
        assert_eq!(v["egress"]["ranges"][0], "10.10.10.0/24");
        assert_eq!(v["connected"], false);
        let e = to_json(&pb::Event {
            action: pb::EventAction::Deleted as i32,
            ..Default::default()
        });
        assert_eq!(e["action"], "EVENT_ACTION_DELETED");
    }

    #[test]
    fn yaml_blocks_quote_strings_and_keep_multiline_text() {
        let v = serde_json::json!({
            "name": "corp",
            "port": 51821,
            "on": true,
            "dns": ["10.0.0.1", "yes"],
            "empty": [],
            "peers": [{"key": "a", "ips": ["1/32"]}],
            "config": "[Interface]\nAddress = x\n",
            "odd key": null,
        });
        // serde_json orders keys by name; YAML 1.1 booleans ("on") stay quoted.
        assert_eq!(
            yaml(&v),
            "config: |\n  [Interface]\n  Address = x\n\
             dns:\n  - \"10.0.0.1\"\n  - \"yes\"\n\
             empty: []\n\
             name: \"corp\"\n\
             \"odd key\": null\n\
             \"on\": true\n\
             peers:\n  -\n    ips:\n      - \"1/32\"\n    key: \"a\"\n\
             port: 51821\n"
        );
    }

    #[test]
    fn tables_fit_the_width_by_cutting_long_columns_but_not_ids() {
        let mut t = Table::new(&["=ID", "NAME", "DESCRIPTION"]);
        t.row(vec![
            "0123456789abcdef".into(),
            "office".into(),
            "a very long description that does not fit".into(),
        ]);
        let wide = t.render(None);
        assert!(wide.contains("does not fit"));
        let narrow = t.render(Some(40));
        for line in narrow.lines() {
            assert!(line.chars().count() <= 40, "{line:?}");
        }
        assert!(narrow.contains("0123456789abcdef"));
        assert!(narrow.contains('…'));
        assert!(narrow.starts_with("ID "));

        // Optional columns go (rightmost first) before others are cut.
        let mut t = Table::new(&["=ID", "NAME", "?EXTRA", "?MORE"]);
        t.row(vec![
            "x".repeat(30),
            "name".into(),
            "e".repeat(20),
            "m".repeat(20),
        ]);
        let out = t.render(Some(60));
        assert!(out.contains("EXTRA") && !out.contains("MORE"), "{out}");
        assert!(!out.contains('…'), "{out}");
        let out = t.render(Some(38));
        assert!(out.lines().all(|l| l.chars().count() <= 38), "{out}");
        assert!(!out.contains("EXTRA") && out.contains("name"), "{out}");
        assert!(t.render(Some(200)).contains("MORE"));
    }
}
