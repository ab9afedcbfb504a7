//! Prometheus metrics (`serve --metrics-listen`), with `prometheus-client`:
//! one registry per server (no global recorder, so several servers in one
//! process keep their own figures).
//!
//! - `meshplane_requests_total{method,code}`: every gRPC call, counted when
//!   it ends with the code it ended with (a stream when it ends: one still
//!   open is not counted yet; a call whose client went away is `CANCELLED`).
//! - `meshplane_request_duration_seconds{method}`: unary calls only, from
//!   the request to the response's end (streams live as long as their
//!   client wants, which would drown the figures).
//! - `meshplane_connected_agents`: nodes with a config stream open here;
//!   `meshplane_config_streams_open`: those streams.
//! - `meshplane_fanout_seconds`: per event that changed the config of nodes
//!   streaming here, from the hub applying it (for this replica's own
//!   writes: right after the commit, before the write is answered) to the
//!   last of those nodes having been sent an update covering it.
//! - `meshplane_agents_drifted`: nodes heard from whose applied revision is
//!   behind their config revision (read from the database at each scrape).
//! - `meshplane_event_revision`: the newest event this replica's hub
//!   applied.
//! - `meshplane_db_pool_connections{state="idle|in_use"}`.
//! - `meshplane_commit_batches_total`, `meshplane_commit_writes_total`:
//!   group commit's batches and the writes they acknowledged.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Code, body::Body};
use tower::{Layer, Service};

use crate::api::methods::Methods;
use crate::hub::Hub;

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: Arc<str>,
    code: &'static str,
}

/// Labels of a timed call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

/// The figures the server records as it runs; the rest are read at each
/// scrape (see [`Metrics::registry`]).
pub struct Metrics {
    methods: Arc<Methods>,
    requests: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    fanout: Histogram,
    drifted: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets: 0.5 ms to about 16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

impl Metrics {
    /// Empty figures for the methods in `methods`.
    pub fn new(methods: Arc<Methods>) -> Arc<Self> {
        Arc::new(Metrics {
            methods,
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            fanout: Histogram::new(latency_buckets()),
            drifted: Gauge::default(),
        })
    }

    /// The fan-out histogram, for the hub to record into.
    pub fn fanout(&self) -> Histogram {
        self.fanout.clone()
    }

    fn finished(&self, method: &Arc<str>, code: Code, started: Option<Instant>) {
        self.requests
            .get_or_create(&CallLabels {
                method: method.clone(),
                code: code_name(code),
            })
            .inc();
        if let Some(t) = started {
            self.durations
                .get_or_create(&MethodLabels {
                    method: method.clone(),
                })
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// The registry to scrape: these figures, and those read from `live`
    /// at each scrape.
    pub fn registry(self: &Arc<Self>, live: Live) -> Registry {
        let mut r = Registry::with_prefix("meshplane");
        r.register(
            "requests",
            "gRPC calls by method and status code, counted when they end",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Duration of unary gRPC calls (streaming calls are not timed)",
            self.durations.clone(),
        );
        r.register(
            "fanout_seconds",
            "Per event that changed the config of nodes streaming here: from the hub applying \
             it to the last of those nodes having been sent an update covering it",
            self.fanout.clone(),
        );
        r.register(
            "agents_drifted",
            "Nodes heard from whose applied revision is behind their config revision",
            self.drifted.clone(),
        );
        r.register_collector(Box::new(live));
        r
    }
}

/// The canonical name of a status code, as grpc-go and the specification
/// spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
pub(crate) fn grpc_code(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    Some(Code::from_bytes(v.as_bytes()))
}

/// Figures read at each scrape.
pub struct Live {
    /// Streams and the event cursor.
    pub hub: Arc<Hub>,
    /// Group commit's counters and the store's pool.
    pub service: crate::service::Service,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "connected_agents",
            "Nodes with a config stream open on this replica",
            int(self.hub.connected_here()),
        )?;
        gauge(
            &mut encoder,
            "config_streams_open",
            "Config streams (WatchConfig) open on this replica",
            int(self.hub.open_streams()),
        )?;
        gauge(
            &mut encoder,
            "event_revision",
            "The newest event this replica's hub applied",
            int(self.hub.cursor()),
        )?;
        let pool = self.service.store().pool_stats();
        {
            let g = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "db_pool_connections",
                "Connections of the database pool by state",
                None,
                g.metric_type(),
            )?;
            for (state, n) in [("idle", pool.idle), ("in_use", pool.in_use)] {
                ConstGauge::new(int(n)).encode(family.encode_family(&[("state", state)])?)?;
            }
        }
        let (batches, writes) = self.service.commit_stats();
        counter(
            &mut encoder,
            "commit_batches",
            "Group commit: transactions committed",
            batches,
        )?;
        counter(
            &mut encoder,
            "commit_writes",
            "Group commit: writes the committed transactions acknowledged",
            writes,
        )?;
        Ok(())
    }
}

/// What `/metrics` answers with.
pub struct Scrape {
    /// The registry.
    pub registry: Registry,
    /// Where the drift gauge is.
    pub metrics: Arc<Metrics>,
    /// Config revisions.
    pub hub: Arc<Hub>,
    /// Applied revisions.
    pub store: Arc<dyn crate::store::Store>,
}

impl Scrape {
    /// The figures in the OpenMetrics text format.
    pub async fn render(&self) -> String {
        match self.store.applied_revisions().await {
            Ok(applied) => {
                let drifted = applied
                    .iter()
                    .filter(|(id, rev)| self.hub.node_revision(id).is_some_and(|c| *rev < c))
                    .count();
                self.metrics.drifted.set(int(drifted));
            }
            Err(e) => tracing::warn!(error = %e, "reading applied revisions for metrics failed"),
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener` until `stop` flips.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>, mut stop: watch::Receiver<bool>) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let scrape = scrape.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    } else if req.method() != http::Method::GET {
                        http::Response::builder()
                            .status(http::StatusCode::METHOD_NOT_ALLOWED)
                            .body(Full::new(Bytes::from_static(b"use GET\n")))
                    } else {
                        http::Response::builder()
                            .header(
                                http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(scrape.render().await)))
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics connection failed");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// The tower layer that counts and times every gRPC call (a no-op without
/// metrics).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl MetricsLayer {
    /// A layer recording into `metrics` (None: records nothing).
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MetricsLayer`] wraps.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S> Service<http::Request<Body>> for Observed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let method = metrics.methods.get(req.uri().path());
        let label = method.label.clone();
        let started = (!method.streaming).then(Instant::now);
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            let (parts, body) = response.into_parts();
            if let Some(code) = grpc_code(&parts.headers) {
                // Trailers-only: the call ended with its headers.
                metrics.finished(&label, code, started);
                return Ok(http::Response::from_parts(parts, body));
            }
            let body = Body::new(Recorded {
                inner: body,
                pending: Some(Pending {
                    metrics,
                    label,
                    started,
                }),
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A call not yet counted; counted as CANCELLED if its body goes away
/// before its trailers.
struct Pending {
    metrics: Arc<Metrics>,
    label: Arc<str>,
    started: Option<Instant>,
}

impl Pending {
    fn finish(self, code: Code) {
        self.metrics.finished(&self.label, code, self.started);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when its trailers go out.
    struct Recorded {
        #[pin]
        inner: Body,
        pending: Option<Pending>,
    }

    impl PinnedDrop for Recorded {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.finish(Code::Cancelled);
            }
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(p) = this.pending.take()
                {
                    p.finish(grpc_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = this.pending.take() {
                    p.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
