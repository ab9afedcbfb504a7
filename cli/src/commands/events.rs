//! `meshctl events`: resource changes as they happen.

use std::io::Write;

use clap::Subcommand;
use futures::StreamExt;
use meshplane_sdk::proto as pb;

use super::csv;
use crate::{
    Ctx, Outcome,
    output::{self, Format, list, time},
};

/// `meshctl events`.
#[derive(Subcommand)]
pub enum EventsCmd {
    /// Prints changes as they happen (one line, JSON object or YAML
    /// document each) until interrupted.
    Watch {
        /// Replay events after this revision first (default: only new ones).
        #[arg(long, default_value_t = 0, value_name = "REVISION")]
        after: u64,
        /// Only events of these networks (comma-separated or repeated).
        #[arg(long = "network", value_name = "NET")]
        networks: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

fn event_name(e: &pb::Event) -> String {
    use pb::event::Resource as R;
    match &e.resource {
        Some(R::Network(n)) => n.name.clone(),
        Some(R::Node(n)) => format!("{}/{}", n.network, n.name),
        Some(R::ExtClient(c)) => format!("{}/{}", c.network, c.name),
        Some(R::EnrollmentKey(k)) => list(&k.networks),
        Some(R::DnsEntry(d)) => format!("{}/{}", d.network, d.name),
        Some(R::Policy(p)) => format!("{} (policy)", p.network),
        None => "-".into(),
    }
}

impl EventsCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let EventsCmd::Watch {
            after,
            networks,
            limit,
        } = self;
        let mut stream = ctx
            .client
            .events()
            .watch(pb::WatchEventsRequest {
                after_revision: after,
                networks: csv(&networks),
            })
            .await?;
        if ctx.format == Format::Table {
            println!(
                "{:<8}  {:<7}  {:<14}  {:<36}  {:<24}  TIME",
                "REVISION", "ACTION", "KIND", "ID", "NAME"
            );
        }
        let mut seen = 0u64;
        while limit.is_none_or(|l| seen < l) {
            let Some(e) = stream.next().await else { break };
            let e = e?;
            seen += 1;
            match ctx.format {
                Format::Table => {
                    let action = pb::EventAction::try_from(e.action)
                        .map(|a| {
                            a.as_str_name()
                                .trim_start_matches("EVENT_ACTION_")
                                .to_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<8}  {:<7}  {:<14}  {:<36}  {:<24}  {}",
                        e.revision,
                        action,
                        e.kind,
                        e.id,
                        event_name(&e),
                        time(&e.event_time)
                    );
                }
                Format::Json => println!("{}", output::to_json(&e)),
                Format::Yaml => print!("---\n{}", output::yaml(&output::to_json(&e))),
            }
            std::io::stdout().flush().ok();
        }
        Ok(())
    }
}
