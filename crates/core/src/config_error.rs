//! The error of a configuration that cannot be accepted, on its own so that the
//! configuration and the targeting it holds can both use it without importing each other.

/// A configuration that cannot be accepted, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field, e.g. `selling_rules[2].account_id`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
