//! The SDK's error: the gRPC code, the server's message and the decoded
//! `google.rpc` details (field violations, retry hint, resource).

use std::{fmt, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Result of SDK calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One wrong field of a refused request, from the server's
/// `google.rpc.BadRequest` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request (e.g. `network.address_range`).
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// The resource a NOT_FOUND (or similar) error is about, from the server's
/// `google.rpc.ResourceInfo` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Kind of resource (e.g. `node`).
    pub resource_type: String,
    /// Its id or name.
    pub resource_name: String,
}

/// Where an [`Error`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server (or the transport on its behalf) answered with a gRPC
    /// status.
    Status,
    /// The server could not be reached (the connection failed); the code
    /// is UNAVAILABLE.
    Transport,
    /// The TLS handshake failed: this client does not trust the server's
    /// certificate (unknown CA, a name it does not list, expired), or the
    /// server refused this client's certificate. The code is UNAVAILABLE,
    /// as gRPC has it, but calls are not retried: the message says what to
    /// change.
    Tls,
    /// The client could not be set up (bad endpoint, TLS not compiled in,
    /// a token that is not valid metadata).
    Config,
    /// The call's deadline passed on the client side.
    Deadline,
}

/// An error from the SDK: keeps the gRPC [`Code`] and decodes the server's
/// rich error details so callers can match on them.
///
/// ```
/// use meshplane_sdk::{Code, Error};
///
/// fn explain(err: &Error) -> String {
///     match err.code() {
///         Code::InvalidArgument => err
///             .field_violations()
///             .iter()
///             .map(|v| format!("{}: {}", v.field, v.description))
///             .collect::<Vec<_>>()
///             .join("; "),
///         Code::AlreadyExists => format!("exists already: {}", err.message()),
///         _ => err.to_string(),
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    code: Code,
    message: String,
    violations: Vec<FieldViolation>,
    retry_delay: Option<Duration>,
    resource: Option<ResourceInfo>,
}

impl Error {
    /// The gRPC code. Client-side problems map to codes too:
    /// [`ErrorKind::Config`] is `INVALID_ARGUMENT` (or `UNIMPLEMENTED` for a
    /// feature not compiled in) and [`ErrorKind::Deadline`] is
    /// `DEADLINE_EXCEEDED`.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Where the error came from.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's message (or the client's, for client-side errors).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field violations of the server's `BadRequest` detail, in the
    /// server's order; empty when there is none. INVALID_ARGUMENT carries
    /// them, and so does ALREADY_EXISTS (naming the field that clashed).
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    /// The description of the violation naming `field`, when there is one.
    pub fn violation(&self, field: &str) -> Option<&str> {
        self.violations
            .iter()
            .find(|v| v.field == field)
            .map(|v| v.description.as_str())
    }

    /// How long the server asked the caller to wait before retrying
    /// (`google.rpc.RetryInfo`), when it said.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_delay
    }

    /// The resource the error is about (`google.rpc.ResourceInfo`), when the
    /// server said.
    pub fn resource(&self) -> Option<&ResourceInfo> {
        self.resource.as_ref()
    }

    /// The canonical name of the code, e.g. `INVALID_ARGUMENT`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::client(ErrorKind::Config, Code::InvalidArgument, message)
    }

    pub(crate) fn deadline(after: Duration) -> Self {
        Self::client(
            ErrorKind::Deadline,
            Code::DeadlineExceeded,
            format!("no answer within the call's deadline of {after:?}"),
        )
    }

    pub(crate) fn client(kind: ErrorKind, code: Code, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
            violations: Vec::new(),
            retry_delay: None,
            resource: None,
        }
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Wrappers often repeat their source's text.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// What went wrong with TLS, in words an operator can act on, when `e` or
/// one of its sources is a TLS error.
#[cfg(feature = "tls")]
pub(crate) fn tls_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    // io::Error and h2::Error hide the error they carry from `source()`:
    // look inside them too.
    let mut todo = vec![e];
    while let Some(e) = todo.pop() {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_tls(r));
        }
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(inner) = io.and_then(|io| io.get_ref()) {
            todo.push(inner);
        }
        if let Some(s) = e.source() {
            todo.push(s);
        }
    }
    // An alert after the handshake (TLS 1.3 servers refuse a client's
    // certificate then) reaches here through h2, which keeps only its text.
    let text = chain(e);
    let alert = text.split("received fatal alert: ").nth(1)?;
    let name: String = alert
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    Some(describe_alert(&name))
}

#[cfg(feature = "tls")]
fn describe_alert(name: &str) -> String {
    match name {
        "CertificateRequired" => "TLS: the server requires a client certificate: pass \
             --client-cert and --client-key (SDK: TlsConfig::identity_files)"
            .into(),
        "UnknownCA" | "BadCertificate" | "CertificateUnknown" | "AccessDenied" => format!(
            "TLS: the server refused this client's certificate (alert {name}): it must be \
             signed by the CA the server verifies clients with (serve --client-ca)"
        ),
        "CertificateExpired" | "CertificateRevoked" => format!(
            "TLS: the server refused this client's certificate (alert {name}): issue a new one"
        ),
        _ => format!("TLS: the server ended the connection with the alert {name}"),
    }
}

#[cfg(not(feature = "tls"))]
pub(crate) fn tls_problem(_: &(dyn std::error::Error + 'static)) -> Option<String> {
    None
}

#[cfg(feature = "tls")]
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    const CA_HINT: &str = "pass the CA certificate that signed it (meshctl: --ca-file or \
         MESHCTL_CA_FILE; SDK: TlsConfig::ca_certificate_file), or check that the server \
         address is the right server";
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS: the server's certificate is signed by a CA this client does not trust \
             (unknown issuer): {CA_HINT}"
        ),
        E::InvalidCertificate(c @ (C::NotValidForName | C::NotValidForNameContext { .. })) => {
            format!(
                "TLS: the server's certificate does not name the host this client connected to \
                 ({c}): connect with a name the certificate lists, or reissue the certificate \
                 with this name"
            )
        }
        E::InvalidCertificate(c @ (C::Expired | C::ExpiredContext { .. })) => format!(
            "TLS: the server's certificate has expired ({c}): renew it on the server (it is \
             reloaded without a restart), or check this host's clock"
        ),
        E::InvalidCertificate(c @ (C::NotValidYet | C::NotValidYetContext { .. })) => {
            format!("TLS: the server's certificate is not valid yet ({c}): check this host's clock")
        }
        E::InvalidCertificate(c) => format!("TLS: the server's certificate was refused: {c}"),
        E::AlertReceived(a) => describe_alert(&format!("{a:?}")),
        E::InvalidMessage(m) => format!(
            "TLS: the server did not answer in TLS ({m:?}); if it serves plaintext, use an \
             http:// address"
        ),
        other => format!("TLS: {other}"),
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let details = s.get_error_details();
        let violations = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let retry_delay = details.retry_info().and_then(|r| r.retry_delay);
        let resource = details.resource_info().map(|r| ResourceInfo {
            resource_type: r.resource_type.clone(),
            resource_name: r.resource_name.clone(),
        });
        // A connection that failed under a call (connect_lazy) arrives as
        // a status whose source is the transport's error.
        let source = std::error::Error::source(&s);
        if let Some(p) = source.and_then(tls_problem) {
            return Self::client(
                ErrorKind::Tls,
                Code::Unavailable,
                format!("{p} [{}]", s.message()),
            );
        }
        // The transport's own words (e.g. the reason in a GOAWAY) are often
        // only in the source.
        let mut message = s.message().to_owned();
        if let Some(detail) = source.map(chain)
            && !message.contains(&detail)
        {
            message = format!("{message}: {detail}");
        }
        Error {
            kind: ErrorKind::Status,
            code: s.code(),
            message,
            violations,
            retry_delay,
            resource,
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        // A transport error at connect time: the server could not be reached.
        match tls_problem(&e) {
            Some(p) => Self::client(
                ErrorKind::Tls,
                Code::Unavailable,
                format!("{p} [{}]", chain(&e)),
            ),
            None => Self::client(ErrorKind::Transport, Code::Unavailable, chain(&e)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_name(), self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("code", &self.code_name())
            .field("message", &self.message);
        if !self.violations.is_empty() {
            d.field("violations", &self.violations);
        }
        if let Some(r) = &self.retry_delay {
            d.field("retry_delay", r);
        }
        if let Some(r) = &self.resource {
            d.field("resource", r);
        }
        d.finish()
    }
}

impl std::error::Error for Error {}

/// The canonical (`SCREAMING_SNAKE_CASE`) name of a gRPC code.
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, FieldViolation as Fv};

    #[test]
    fn decodes_field_violations_and_retry_info() {
        let mut details = ErrorDetails::with_bad_request(vec![
            Fv::new("network.name", "is required"),
            Fv::new("network.address_range", "has host bits set"),
        ]);
        details.set_retry_info(Some(Duration::from_secs(3)));
        let s = Status::with_error_details(Code::InvalidArgument, "invalid argument", details);
        let e = Error::from(s);
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.kind(), ErrorKind::Status);
        assert_eq!(e.field_violations().len(), 2);
        assert_eq!(e.violation("network.name"), Some("is required"));
        assert_eq!(e.violation("nope"), None);
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "INVALID_ARGUMENT: invalid argument");
    }

    #[test]
    fn plain_status_has_no_details() {
        let e = Error::from(Status::not_found("node \"x\" not found"));
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.field_violations().is_empty());
        assert_eq!(e.retry_delay(), None);
        assert!(e.resource().is_none());
    }
}
