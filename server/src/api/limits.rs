//! Limits on calls, as tower layers around every service, each answering
//! with a clear status:
//!
//! - [`DeadlineLayer`]: a unary call that runs longer than the limit ends
//!   with `DEADLINE_EXCEEDED` (its handler is dropped; a write it made may
//!   still have committed). Streaming methods (WatchConfig, WatchEvents,
//!   health's Watch, reflection) are exempt: they live as long as their
//!   client wants.
//! - [`UnaryLimitLayer`]: at most N unary calls of meshplane's API run at
//!   once; a call that finds no free slot within a short wait ends with
//!   `RESOURCE_EXHAUSTED` and a `RetryInfo`, instead of queueing without
//!   bound. Streams (limited by the hub) and health and reflection (cheap,
//!   and a load balancer's health check must not be refused) are exempt.
//!
//! The maximum message size is tonic's own knob, set on each service; the
//! failed-authentication throttle is in [`super::auth`]; the cap on config
//! streams per node is the hub's.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::methods::Methods;

/// Limits on requests, set by `serve`'s flags.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// How long a unary call may run (None: no limit).
    pub unary_deadline: Option<Duration>,
    /// The largest request message accepted, in bytes.
    pub max_message_size: usize,
    /// Unary calls running at once (0: no limit).
    pub max_concurrent_unary: usize,
    /// How long a unary call waits for a slot before it is refused.
    pub unary_queue_wait: Duration,
    /// Failed authentications from one address within
    /// `auth_failure_window` before the address is throttled for a window
    /// (0: never throttled).
    pub auth_failure_limit: u32,
    /// The throttle's window, also how long a throttled address waits.
    pub auth_failure_window: Duration,
}

/// The default unary deadline (30 s).
pub const DEFAULT_UNARY_DEADLINE: Duration = Duration::from_secs(30);
/// The default maximum message size (4 MiB, tonic's default).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;
/// The default number of unary calls running at once.
pub const DEFAULT_MAX_CONCURRENT_UNARY: usize = 1024;
/// The default wait for a unary slot.
pub const DEFAULT_UNARY_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// The default number of failed authentications before throttling.
pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 20;
/// The default throttle window.
pub const DEFAULT_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            unary_deadline: Some(DEFAULT_UNARY_DEADLINE),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_concurrent_unary: DEFAULT_MAX_CONCURRENT_UNARY,
            unary_queue_wait: DEFAULT_UNARY_QUEUE_WAIT,
            auth_failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
            auth_failure_window: DEFAULT_AUTH_FAILURE_WINDOW,
        }
    }
}

/// RESOURCE_EXHAUSTED with a `RetryInfo` of `after`.
pub fn exhausted(message: String, after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(after)),
    )
}

/// Ends unary calls that run past a deadline with DEADLINE_EXCEEDED.
#[derive(Clone)]
pub struct DeadlineLayer {
    methods: Arc<Methods>,
    limit: Option<Duration>,
}

impl DeadlineLayer {
    /// Unary calls may run `limit` (None: no limit).
    pub fn new(methods: Arc<Methods>, limit: Option<Duration>) -> Self {
        Self { methods, limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            methods: self.methods.clone(),
            limit: self.limit,
        }
    }
}

/// The service [`DeadlineLayer`] wraps.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    methods: Arc<Methods>,
    limit: Option<Duration>,
}

impl<S> Service<http::Request<Body>> for Deadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let limit = match self.limit {
            Some(l) if !self.methods.get(req.uri().path()).streaming => l,
            _ => return Box::pin(self.inner.call(req)),
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(r) => r,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call ran longer than the server's limit of {} ms for unary calls",
                    limit.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// Runs at most a fixed number of unary API calls at once.
#[derive(Clone)]
pub struct UnaryLimitLayer {
    methods: Arc<Methods>,
    slots: Option<Arc<Semaphore>>,
    limit: usize,
    wait: Duration,
}

impl UnaryLimitLayer {
    /// At most `limit` unary calls at once (0: no limit), each waiting at
    /// most `wait` for a slot.
    pub fn new(methods: Arc<Methods>, limit: usize, wait: Duration) -> Self {
        Self {
            methods,
            slots: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            wait,
        }
    }
}

impl<S> Layer<S> for UnaryLimitLayer {
    type Service = UnaryLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`UnaryLimitLayer`] wraps.
#[derive(Clone)]
pub struct UnaryLimit<S> {
    inner: S,
    layer: UnaryLimitLayer,
}

impl<S> Service<http::Request<Body>> for UnaryLimit<S>
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
        let method = self.layer.methods.get(req.uri().path());
        let slots = match &self.layer.slots {
            Some(s) if method.api && !method.streaming => s.clone(),
            _ => return Box::pin(self.inner.call(req)),
        };
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limit, wait) = (self.layer.limit, self.layer.wait);
        Box::pin(async move {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout(wait, slots.acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        let after = Duration::from_millis(500 + rand::random::<u64>() % 1500);
                        return Ok(exhausted(
                            format!(
                                "the server is running its limit of {limit} calls at once; \
                                 retry shortly"
                            ),
                            after,
                        )
                        .into_http());
                    }
                },
            };
            let r = inner.call(req).await;
            drop(permit);
            r
        })
    }
}
