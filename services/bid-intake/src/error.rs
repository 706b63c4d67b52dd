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
            _ => DecideError::Downstream { stage, status },
        }
    }
}

impl From<DecideError> for Status {
    fn from(error: DecideError) -> Self {
        match &error {
            DecideError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            DecideError::NotFound { .. } => Status::not_found(error.to_string()),
            DecideError::NotReady => Status::unavailable(error.to_string()),
            DecideError::DeadlineExceeded { .. } => Status::deadline_exceeded(error.to_string()),
            DecideError::Downstream { stage, status } => {
                tracing::error!(stage, %status, "downstream call failed");
                Status::unavailable(format!("{stage} is unavailable"))
            }
            DecideError::Store(state_error) => {
                tracing::error!(%state_error, "state write failed");
                Status::unavailable("the state store is unavailable; nothing was recorded")
            }
        }
    }
}
