//! How errors become gRPC statuses, the same in every service: a caller's mistake is
//! `INVALID_ARGUMENT` naming the field, in the message (for grpcurl readers) and as a
//! `google.rpc.BadRequest` detail (for programs); a real unavailability is
//! `UNAVAILABLE`; anything else is our fault, logged with its whole chain and answered
//! `INTERNAL` with nothing of the internals.

use std::error::Error;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT`: "`field`: `description`", with the field violation as detail.
pub fn field_violation(field: &str, description: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// `INVALID_ARGUMENT` from a message of the form "field: description" (the form every
/// validation error of Cascade takes); a message without a field has no violation.
pub fn invalid_argument(message: impl std::fmt::Display) -> Status {
    let message = message.to_string();
    match message.split_once(": ") {
        Some((field, description)) if !field.contains(' ') => field_violation(field, description),
        _ => Status::invalid_argument(message),
    }
}

/// `INTERNAL` for a fault of ours: the error and its sources are logged, the caller is
/// told only that it was internal.
pub fn internal(context: &str, error: &dyn Error) -> Status {
    tracing::error!(context, error = %chain(error), "internal error");
    Status::internal(format!("internal error ({context})"))
}

/// `UNAVAILABLE` for something that may work when retried; what failed is logged.
pub fn unavailable(public_message: &str, error: &dyn Error) -> Status {
    tracing::warn!(error = %chain(error), "{public_message}");
    Status::unavailable(public_message.to_string())
}

/// A call whose message is over the server's size limit answers `RESOURCE_EXHAUSTED`
/// (the gRPC convention for a message too large), not the `OUT_OF_RANGE` tonic's codec
/// reports; the message, which states the size and the limit, is kept. Every other
/// response passes unchanged.
pub fn oversized_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let oversized = Status::from_header_map(response.headers()).filter(|status| {
        status.code() == Code::OutOfRange
            && status
                .message()
                .contains("decoded message length too large")
    });
    if let Some(status) = oversized {
        let replaced = Status::resource_exhausted(status.message().to_string());
        if replaced.add_header(response.headers_mut()).is_err() {
            tracing::warn!("cannot rewrite the status of an oversized message");
        }
    }
    response
}

/// An error and every source under it, on one line.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_carries_its_violation_as_detail() {
        let status = invalid_argument("request.imp[0].bidfloor: must not be negative");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request.imp[0].bidfloor: must not be negative"
        );
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "request.imp[0].bidfloor");
        assert_eq!(violations[0].description, "must not be negative");
        let plain = invalid_argument("a request has a site or an app, not both");
        assert!(plain.get_error_details().bad_request().is_none());
    }

    #[test]
    fn internals_are_not_sent() {
        #[derive(Debug, thiserror::Error)]
        #[error("redis at 10.0.0.7:6379 said WRONGTYPE")]
        struct Secret;
        let status = internal("auction", &Secret);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("10.0.0.7"));
    }
}
