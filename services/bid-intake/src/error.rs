use cascade_server::status;
use tonic::{Code, Status};

/// Everything a decision or an event report can fail with; mapped to a gRPC status in one place, and never
/// with internal details in the message.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The request is malformed; `field` is the path of the offending field.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{field}: {message}")]
    NotFound { field: String, message: String },
    #[error("configuration snapshot not loaded yet")]
    NotReady,
    #[error("the deadline ran out during {stage}")]
    DeadlineExceeded { stage: &'static str },
    /// This service, or one it needs, sheds load: the caller should back off.
    #[error("overloaded ({stage})")]
    Overloaded { stage: &'static str },
    /// The service could not be reached: retrying may work.
    #[error("{stage} is unavailable: {status}")]
    Unavailable { stage: &'static str, status: Status },
    /// The service refused what bid-intake sent it: a fault of ours, not the caller's.
    #[error("{stage} failed: {status}")]
    Downstream { stage: &'static str, status: Status },
    #[error("cannot store selections: {0}")]
    Store(#[from] cascade_state::StateError),
}

impl DecideError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DecideError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Classifies the failure of a call to another service.
    pub fn downstream(stage: &'static str, status: Status) -> Self {
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => DecideError::DeadlineExceeded { stage },
            Code::ResourceExhausted => DecideError::Overloaded { stage },
            Code::Unavailable => DecideError::Unavailable { stage, status },
            _ => DecideError::Downstream { stage, status },
        }
    }
}

impl From<DecideError> for Status {
    fn from(error: DecideError) -> Self {
        match &error {
            DecideError::InvalidArgument { field, message } => {
                status::field_violation(field, message)
            }
            DecideError::NotFound { .. } => Status::not_found(error.to_string()),
            DecideError::NotReady => Status::unavailable(error.to_string()),
            DecideError::DeadlineExceeded { .. } => Status::deadline_exceeded(error.to_string()),
            DecideError::Overloaded { .. } => cascade_server::admission::overloaded(),
            DecideError::Unavailable { stage, .. } => {
                status::unavailable(&format!("{stage} is unavailable"), &error)
            }
            DecideError::Downstream { stage, .. } => status::internal(stage, &error),
            DecideError::Store(state_error) if state_error.is_unavailable() => status::unavailable(
                "the state store is unavailable; nothing was recorded",
                &error,
            ),
            DecideError::Store(_) => status::internal("state store", &error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_state::StateError;

    fn code(error: DecideError) -> Code {
        Status::from(error).code()
    }

    #[test]
    fn only_a_real_unavailability_is_unavailable() {
        let downstream = |status| code(DecideError::downstream("auction", status));
        assert_eq!(
            downstream(Status::unavailable("connection refused")),
            Code::Unavailable
        );
        // A service that sheds load says so to the gateway, which backs off.
        assert_eq!(
            downstream(Status::resource_exhausted("overloaded")),
            Code::ResourceExhausted
        );
        assert_eq!(
            downstream(Status::deadline_exceeded("late")),
            Code::DeadlineExceeded
        );
        // What another service refuses is what bid-intake sent it: our fault, and not
        // one a gateway should retry.
        assert_eq!(
            downstream(Status::invalid_argument("imps[0]: bad")),
            Code::Internal
        );
        assert_eq!(downstream(Status::internal("panic")), Code::Internal);
        assert_eq!(
            code(DecideError::Store(StateError::BacklogFull { capacity: 1 })),
            Code::Unavailable
        );
        assert_eq!(
            code(DecideError::Store(StateError::Protocol(
                "a pipeline reply is missing"
            ))),
            Code::Internal
        );
    }

    #[test]
    fn internals_stay_in_the_log() {
        let status = Status::from(DecideError::downstream(
            "auction",
            Status::invalid_argument("imps[0].candidates[3].source: secret detail"),
        ));
        assert!(!status.message().contains("secret"), "{}", status.message());
    }
}
