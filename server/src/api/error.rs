//! The one mapping from domain errors to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::Error;

/// Converts a domain error into the status the caller sees. Exhaustive: a new
/// error variant does not compile until it is mapped here.
pub fn to_status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(violations) => {
            let message = e_message(&violations);
            let details = ErrorDetails::with_bad_request(
                violations
                    .into_iter()
                    .map(|v| FieldViolation::new(v.field, v.description))
                    .collect::<Vec<_>>(),
            );
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::NotFound { kind, id } => Status::with_error_details(
            Code::NotFound,
            format!("{kind} {id:?} not found"),
            ErrorDetails::with_resource_info(kind, id, "", "not found"),
        ),
        Error::AlreadyExists { field, message } => Status::with_error_details(
            Code::AlreadyExists,
            message.clone(),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::Unavailable(m) => Status::with_error_details(
            Code::Unavailable,
            m,
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
        ),
        Error::OutOfRange(m) => Status::out_of_range(m),
        Error::Aborted(m) => Status::with_error_details(
            Code::Aborted,
            m,
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(100))),
        ),
        Error::Internal(m) => {
            // The detail may contain driver text: log it, never send it.
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error; see the server log")
        }
    }
}

fn e_message(v: &[crate::domain::FieldViolation]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect();
    format!("invalid argument: {}", parts.join("; "))
}

/// `?`-friendly conversion for handlers.
pub trait IntoStatus<T> {
    /// Maps the error with [`to_status`].
    fn status(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, Error> {
    fn status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

/// INVALID_ARGUMENT for a missing required field.
pub fn required(field: &str) -> Status {
    to_status(Error::invalid(field, "is required"))
}
