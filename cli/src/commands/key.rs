//! `meshctl key`: enrollment keys.

use clap::Subcommand;
use meshplane_sdk::proto as pb;

use super::{csv, done, show_list, show_one};
use crate::{
    Ctx, Failure, Outcome,
    output::{Format, Table, list, or_dash, time},
};

/// `meshctl key`.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Creates an enrollment key and prints its token (only this once).
    Create {
        /// Networks a node may join with it (comma-separated or repeated).
        #[arg(long = "network", required = true, value_name = "NET")]
        networks: Vec<String>,
        /// Registrations it allows.
        #[arg(
            long,
            conflicts_with = "unlimited",
            required_unless_present = "unlimited"
        )]
        uses: Option<u32>,
        /// Any number of registrations.
        #[arg(long)]
        unlimited: bool,
        /// When it stops working: a duration (30m, 24h, 7d) or an RFC 3339
        /// time.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// A label for operators.
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists enrollment keys (never their tokens).
    List {
        /// Only keys valid for this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Revokes an enrollment key.
    Delete {
        /// Its id.
        id: String,
    },
}

fn key_table(items: &[pb::EnrollmentKey]) -> Table {
    let mut t = Table::new(&["=ID", "NETWORKS", "USES LEFT", "?EXPIRES", "?DESCRIPTION"]);
    for k in items {
        t.row(vec![
            k.id.clone(),
            list(&k.networks),
            if k.unlimited {
                "unlimited".into()
            } else {
                k.uses_remaining.to_string()
            },
            if k.expire_time.is_some() {
                time(&k.expire_time)
            } else {
                "never".into()
            },
            or_dash(&k.description),
        ]);
    }
    t
}

/// `30m`, `24h`, `7d`, `90s` from now, or an RFC 3339 time.
fn parse_when(s: &str) -> Result<prost_types::Timestamp, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "--expires {s:?}: give a duration (30m, 24h, 7d) or an RFC 3339 time"
        ))
    };
    let at = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&chrono::Utc)
    } else {
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            _ => return Err(bad()),
        };
        chrono::Utc::now() + chrono::Duration::seconds(secs)
    };
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

impl KeyCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let keys = ctx.client.enrollment_keys();
        match self {
            KeyCmd::Create {
                networks,
                uses,
                unlimited,
                expires,
                description,
            } => {
                let k = pb::EnrollmentKey {
                    networks: csv(&networks),
                    uses_remaining: uses.unwrap_or(0),
                    unlimited,
                    expire_time: expires.as_deref().map(parse_when).transpose()?,
                    description: description.unwrap_or_default(),
                    ..Default::default()
                };
                let k = keys.create(k).await?;
                show_one(ctx, &k, key_table);
                if ctx.format == Format::Table {
                    println!("\ntoken (shown only now): {}", k.token);
                }
            }
            KeyCmd::List { network } => {
                show_list(ctx, &keys.list_all(network.as_deref()).await?, key_table)
            }
            KeyCmd::Delete { id } => {
                keys.delete(&id).await?;
                done(ctx, format!("revoked enrollment key {id}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_durations_and_times() {
        let now = chrono::Utc::now().timestamp();
        let t = parse_when("24h").ok().unwrap();
        assert!((t.seconds - now - 86400).abs() < 5);
        let t = parse_when("2030-01-02T03:04:05Z").ok().unwrap();
        assert_eq!(t.seconds, 1_893_553_445);
        assert!(parse_when("soon").is_err());
        assert!(parse_when("5w").is_err());
    }
}
