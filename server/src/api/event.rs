//! EventService: the event log as a stream, resumable by revision.

use std::collections::VecDeque;

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, event_service_server::EventService};

use super::{AppState, BoxStream, convert::ts, error::IntoStatus};
use crate::domain::{
    Error,
    event::{Action, Event, Resource},
};

/// The EventService implementation.
pub struct Events(pub AppState);

/// Events read per query.
const PAGE: usize = 500;

/// OUT_OF_RANGE for a reader at `after` when the oldest event kept is
/// `oldest`.
fn pruned(after: u64, oldest: u64) -> Error {
    Error::OutOfRange(format!(
        "events after revision {after} were pruned: the oldest revision available is {oldest}; \
         resume from revision {} (after reading current state) or from 0 for new events only",
        oldest - 1
    ))
}

fn to_pb(e: &Event, state: &AppState) -> pb::Event {
    use pb::event::Resource as R;
    pb::Event {
        revision: e.revision,
        action: match e.action {
            Action::Created => pb::EventAction::Created,
            Action::Updated => pb::EventAction::Updated,
            Action::Deleted => pb::EventAction::Deleted,
        } as i32,
        event_time: ts(e.time),
        kind: e.resource.kind().into(),
        id: e.resource.id(),
        resource: Some(match &e.resource {
            Resource::Network(n) => R::Network(super::network::to_pb(n)),
            Resource::Node(n) => R::Node(super::node::to_pb(n, &state.hub)),
            Resource::ExtClient(c) => R::ExtClient(super::ext_client::to_pb(c)),
            Resource::EnrollmentKey(k) => R::EnrollmentKey(super::enrollment_key::to_pb(k)),
            Resource::DnsEntry(d) => R::DnsEntry(super::dns::to_pb(d)),
            // The payload holds the revision before the change; the
            // change's own is the event's.
            Resource::Policy(p) => R::Policy(super::policy::to_pb(
                &super::super::domain::policy::NetworkPolicy {
                    revision: e.revision,
                    ..(**p).clone()
                },
            )),
        }),
    }
}

struct EventStream {
    state: AppState,
    cursor: u64,
    networks: Vec<String>,
    buffer: VecDeque<Event>,
    latest: tokio::sync::watch::Receiver<u64>,
    drain: tokio::sync::watch::Receiver<bool>,
}

impl EventStream {
    fn wanted(&self, e: &Event) -> bool {
        self.networks.is_empty()
            || e.resource
                .network()
                .is_some_and(|n| self.networks.contains(&n))
    }

    async fn next(mut self) -> Option<(Result<pb::Event, Status>, Self)> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                if self.wanted(&e) {
                    let msg = to_pb(&e, &self.state);
                    return Some((Ok(msg), self));
                }
                continue;
            }
            match self.state.service.events_after(self.cursor, PAGE).await {
                // Revisions are dense: a jump means the events in between
                // were pruned while this reader was behind.
                Ok(events) if events.first().is_some_and(|e| e.revision > self.cursor + 1) => {
                    let oldest = events[0].revision;
                    return Some((
                        Err(super::error::to_status(pruned(self.cursor, oldest))),
                        self,
                    ));
                }
                Ok(events) if !events.is_empty() => {
                    self.cursor = events.last().map(|e| e.revision).unwrap_or(self.cursor);
                    self.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Some((Err(super::error::to_status(e)), self)),
            }
            tokio::select! {
                biased;
                _ = self.drain.wait_for(|d| *d) => return None,
                r = self.latest.wait_for(|l| *l > self.cursor) => {
                    if r.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl EventService for Events {
    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = req.into_inner();
        for (i, n) in r.networks.iter().enumerate() {
            if n.is_empty() {
                return Err(super::error::to_status(Error::invalid(
                    format!("networks[{i}]"),
                    "a network name cannot be empty",
                )));
            }
            super::network_filter(&format!("networks[{i}]"), n)?;
        }
        let bounds = self.0.service.log_bounds().await.status()?;
        let cursor = if r.after_revision == 0 {
            bounds.latest
        } else if r.after_revision > bounds.latest {
            return Err(super::error::to_status(Error::OutOfRange(format!(
                "after_revision {} was never issued: the newest revision is {}",
                r.after_revision, bounds.latest
            ))));
        } else if r.after_revision + 1 < bounds.oldest {
            return Err(super::error::to_status(pruned(
                r.after_revision,
                bounds.oldest,
            )));
        } else {
            r.after_revision
        };
        let stream = EventStream {
            state: self.0.clone(),
            cursor,
            networks: r.networks,
            buffer: VecDeque::new(),
            latest: self.0.hub.latest(),
            drain: self.0.drain.clone(),
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            stream,
            EventStream::next,
        ))))
    }
}
