//! Domain errors. `crate::api::error` maps every variant to exactly one gRPC
//! status; nothing else decides status codes.

use std::fmt;

/// One invalid field of a request, named by its proto path
/// (e.g. `network.address_range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Proto field path.
    pub field: String,
    /// What is wrong with it, in words an operator can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything that can go wrong in meshplane, by what the caller can do
/// about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; each violation names a field.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Kind of resource ("network", "node", ...).
        kind: &'static str,
        /// Its id or name.
        id: String,
    },
    /// A resource with the same unique value exists.
    #[error("{message}")]
    AlreadyExists {
        /// Field whose value is taken.
        field: String,
        /// What collides with what.
        message: String,
    },
    /// The request is valid but the system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A pool (addresses, key uses, connections) is used up.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The store is temporarily unable to answer (e.g. locked or unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// A position (a revision) outside what exists: pruned, or never
    /// issued.
    #[error("{0}")]
    OutOfRange(String),
    /// A concurrent write conflicted with this one (a unique constraint, a
    /// serialization failure or a deadlock the database detected). The
    /// service layer retries the whole transaction; callers see it only when
    /// retries ran out.
    #[error("{0}")]
    Aborted(String),
    /// A bug or an environment failure. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

fn join(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A single-field INVALID_ARGUMENT.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// NOT_FOUND for a resource; an id longer than any real one is cut
    /// (see [`clip`]), since it goes back in the status.
    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        Error::NotFound {
            kind,
            id: clip(&id.to_string()),
        }
    }

    /// ALREADY_EXISTS naming the field whose value is taken.
    pub fn already_exists(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::AlreadyExists {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most field violations one refusal carries: a request with thousands of
/// bad entries gets the first ones (its details travel in a header, which
/// clients refuse past a few KiB).
pub const MAX_VIOLATIONS: usize = 16;

/// Longest echo of a value the caller sent, in characters (see [`shown`]).
const ECHO_MAX: usize = 32;

/// `s` for a message: whole when short, else its first characters and
/// "…". What a refusal says goes back in headers: echoing a 100 KB value
/// whole makes the answer unreadable to the client.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// `s` quoted for a message (as `{s:?}` would), cut like [`clip`] with its
/// length in bytes.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &s[..end], s.len()),
    }
}

/// Collects field violations, so a request reports every bad field at once
/// (the first [`MAX_VIOLATIONS`] of them).
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>, usize);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.push(FieldViolation::new(field, description));
    }

    fn push(&mut self, v: FieldViolation) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(v);
        }
        self.1 += 1;
    }

    /// Records the violation of a failed check and returns its value.
    pub fn check<T>(&mut self, r: Result<T, FieldViolation>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    /// How many violations were recorded (kept or not).
    pub fn count(&self) -> usize {
        self.1
    }

    /// Ok when nothing was recorded, INVALID_ARGUMENT otherwise.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_of_long_values_are_cut_at_a_character_boundary() {
        assert_eq!(shown("eth0"), "\"eth0\"");
        assert_eq!(clip("eth0"), "eth0");
        let long = "é".repeat(100);
        let s = shown(&long);
        assert!(s.starts_with(&format!("{:?}", "é".repeat(32))), "{s}");
        assert!(s.ends_with("… (200 bytes)"), "{s}");
        assert_eq!(clip(&long), format!("{}…", "é".repeat(32)));
        match Error::not_found("node", "x".repeat(100_000)) {
            Error::NotFound { id, .. } => assert_eq!(id.chars().count(), 33),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn violations_are_capped_but_counted() {
        let mut v = Violations::default();
        for i in 0..1000 {
            v.add(format!("ranges[{i}]"), "bad");
        }
        assert_eq!(v.count(), 1000);
        match v.finish() {
            Err(Error::InvalidArgument(kept)) => {
                assert_eq!(kept.len(), MAX_VIOLATIONS);
                assert_eq!(kept[0].field, "ranges[0]");
            }
            other => panic!("{other:?}"),
        }
    }
}
