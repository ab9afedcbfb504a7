//! How results are printed: `-o json` and `-o yaml` render the generated
//! messages as proto3 JSON (lowerCamelCase names, as grpcurl prints them,
//! with default values included and 64-bit integers as numbers); `-o table`
//! prints tables that fit the terminal.

use std::sync::OnceLock;

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
    Policy,
    UpdatePolicyResponse,
    TestAccessResponse,
);

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(meshplane_sdk::FILE_DESCRIPTOR_SET)
            .expect("the SDK's descriptor set decodes")
    })
}

/// A message from proto3 JSON (field names as in the proto or in
/// lowerCamelCase, enums by name); the error says what does not fit.
pub fn from_json<M: Named + Default>(v: Value) -> Result<M, String> {
    let desc = pool()
        .get_message_by_name(M::NAME)
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::NAME));
    let dynamic = DynamicMessage::deserialize(desc, v).map_err(|e| e.to_string())?;
    dynamic.transcode_to::<M>().map_err(|e| e.to_string())
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

/// A JSON value as a YAML document (block style; strings quoted only where
/// YAML needs it, literal blocks when they span lines).
pub fn yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).expect("JSON values serialize to YAML")
}

/// Spaces between columns.
const GAP: u16 = 2;

/// Columns of the terminal stdout is, when it is one: `COLUMNS` when set,
/// else what the terminal says.
fn term_width() -> Option<u16> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| *c > 0)
        .or_else(|| comfy_table::Table::new().width())
}

/// A table: headers, rows, the columns never shortened (ids) and those left
/// out first when the terminal is too narrow. Rendered with `comfy-table`:
/// no borders, two spaces between columns, one line per row.
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

    /// The columns shown within `width`: optional ones are left out
    /// (rightmost first) until the rest fit uncut or none is left.
    fn shown(&self, width: Option<u16>) -> Vec<bool> {
        let mut shown = vec![true; self.headers.len()];
        let Some(max) = width else {
            return shown;
        };
        let len = |s: &str| s.chars().count();
        let natural: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| len(&r[i]))
                    .chain([len(self.headers[i])])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total = |shown: &[bool]| {
            let w: Vec<usize> = (0..shown.len())
                .filter(|&i| shown[i])
                .map(|i| natural[i])
                .collect();
            w.iter().sum::<usize>() + usize::from(GAP) * w.len().saturating_sub(1)
        };
        while total(&shown) > usize::from(max) {
            match (0..shown.len()).rposition(|i| shown[i] && self.optional[i]) {
                Some(i) => shown[i] = false,
                None => break,
            }
        }
        shown
    }

    /// The table as text fitting `width` columns when given: optional
    /// columns go first, then the widest others are cut (with `…`) down to
    /// their header's width (at least 6); `=` columns are never cut.
    pub fn render(&self, width: Option<u16>) -> String {
        use comfy_table::{Cell, ColumnConstraint, ContentArrangement, Row, Width, presets};

        let shown = self.shown(width);
        let mut t = comfy_table::Table::new();
        t.load_preset(presets::NOTHING)
            .set_truncation_indicator("…")
            .force_no_tty();
        match width {
            Some(w) => t
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(w),
            None => t.set_content_arrangement(ContentArrangement::Disabled),
        };
        let one_line = |cells: Vec<Cell>| {
            let mut r = Row::from(cells);
            r.max_height(1);
            r
        };
        t.set_header(one_line(self.headers.iter().map(Cell::new).collect()));
        for r in &self.rows {
            t.add_row(one_line(r.iter().map(Cell::new).collect()));
        }
        let last = (0..shown.len()).rposition(|i| shown[i]);
        for (i, c) in t.column_iter_mut().enumerate() {
            c.set_padding((0, if Some(i) == last { 0 } else { GAP }));
            let constraint = if !shown[i] {
                ColumnConstraint::Hidden
            } else if self.keep[i] {
                ColumnConstraint::ContentWidth
            } else {
                let min = self.headers[i].chars().count().max(6);
                ColumnConstraint::LowerBoundary(Width::Fixed(min as u16))
            };
            c.set_constraint(constraint);
        }
        let mut out = t.trim_fmt();
        out.push('\n');
        out
    }

    /// Prints the table to fit the terminal.
    pub fn print(&self) {
        print!("{}", self.render(term_width()));
    }
}

/// One item as `name  value` lines (e.g. `node get`): values wrap, never cut,
/// to fit the terminal.
#[derive(Default)]
pub struct Fields {
    rows: Vec<(&'static str, String)>,
}

impl Fields {
    /// No fields yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a line.
    pub fn add(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        self.rows.push((name, value.into()));
        self
    }

    /// The lines, fitting `width` columns when given.
    pub fn render(&self, width: Option<u16>) -> String {
        use comfy_table::{ColumnConstraint, ContentArrangement, presets};

        let mut t = comfy_table::Table::new();
        t.load_preset(presets::NOTHING).force_no_tty();
        match width {
            Some(w) => t
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(w),
            None => t.set_content_arrangement(ContentArrangement::Disabled),
        };
        for (name, value) in &self.rows {
            t.add_row([*name, value.as_str()]);
        }
        if let Some(c) = t.column_mut(0) {
            c.set_padding((0, GAP))
                .set_constraint(ColumnConstraint::ContentWidth);
        }
        if let Some(c) = t.column_mut(1) {
            c.set_padding((0, 0));
        }
        let mut out = t.trim_fmt();
        out.push('\n');
        out
    }

    /// Prints the lines to fit the terminal.
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
                ..Default::default()
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
    fn yaml_is_block_style_with_multiline_text_as_literal_blocks() {
        let v = serde_json::json!({
            "name": "corp",
            "port": 51821,
            "dns": ["10.0.0.1", "true"],
            "empty": [],
            "peers": [{"key": "a", "ips": ["1/32"]}],
            "config": "[Interface]\nAddress = x\n",
            "odd key": null,
        });
        // serde_json orders keys by name; strings that would read as
        // another type ("true") are quoted.
        assert_eq!(
            yaml(&v),
            "config: |\n  [Interface]\n  Address = x\n\
             dns:\n- 10.0.0.1\n- 'true'\n\
             empty: []\n\
             name: corp\n\
             odd key: null\n\
             peers:\n- ips:\n  - 1/32\n  key: a\n\
             port: 51821\n"
        );
    }

    #[test]
    fn tables_are_aligned_columns_without_borders() {
        let mut t = Table::new(&["=ID", "NAME", "?EXTRA"]);
        t.row(vec!["abc".into(), "office".into(), "-".into()]);
        t.row(vec!["abcdef".into(), "x".into(), "".into()]);
        let want = "ID      NAME    EXTRA\nabc     office  -\nabcdef  x\n";
        assert_eq!(t.render(None), want);
        assert_eq!(t.render(Some(80)), want);
        let narrow = t.render(Some(20));
        assert_eq!(narrow, "ID      NAME\nabc     office\nabcdef  x\n");
        let t = Table::new(&["NAME", "RANGE"]);
        assert_eq!(t.render(None), "NAME  RANGE\n");
    }

    #[test]
    fn fields_align_names_and_wrap_long_values() {
        let mut f = Fields::new();
        f.add("id", "n1").add(
            "apply error",
            "wg: RTNETLINK answers: operation not permitted",
        );
        assert_eq!(
            f.render(None),
            "id           n1\napply error  wg: RTNETLINK answers: operation not permitted\n"
        );
        let narrow = f.render(Some(40));
        assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
        assert!(
            narrow.contains("permitted") && !narrow.contains('…'),
            "{narrow}"
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
