//! Checking a service's settings once they are loaded: a value out of range, or two
//! that contradict each other, is refused naming its key, so that a service exits at
//! start with a message that says what to fix instead of running with a silently
//! clamped value.

/// A setting that cannot be used: its key (dotted, as in the settings file) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting {key}: {message}")]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error for a key inside `section`.
    pub fn under(self, section: &str) -> Self {
        Self {
            key: format!("{section}.{}", self.key),
            ..self
        }
    }
}

/// Settings that can check themselves.
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidSetting>;

    /// [`Validate::validate`] with every key prefixed by `section`.
    fn validate_under(&self, section: &str) -> Result<(), InvalidSetting> {
        self.validate().map_err(|error| error.under(section))
    }
}

/// `Ok` when `holds`, otherwise the error naming `key`.
pub fn require(
    holds: bool,
    key: &str,
    message: impl FnOnce() -> String,
) -> Result<(), InvalidSetting> {
    if holds {
        Ok(())
    } else {
        Err(InvalidSetting::new(key, message()))
    }
}

/// `Ok` when `value` is at least `min`.
pub fn at_least(key: &str, value: u64, min: u64) -> Result<(), InvalidSetting> {
    require(value >= min, key, || {
        format!("must be at least {min}, got {value}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Budget {
        default_ms: u64,
        max_ms: u64,
    }

    impl Validate for Budget {
        fn validate(&self) -> Result<(), InvalidSetting> {
            at_least("default_ms", self.default_ms, 1)?;
            require(self.default_ms <= self.max_ms, "default_ms", || {
                format!("must not exceed max_ms ({})", self.max_ms)
            })
        }
    }

    #[test]
    fn a_bad_setting_is_named_with_its_section() {
        let error = Budget {
            default_ms: 0,
            max_ms: 5,
        }
        .validate_under("budget")
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "setting budget.default_ms: must be at least 1, got 0"
        );
        let error = Budget {
            default_ms: 9,
            max_ms: 5,
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.key, "default_ms");
        assert!(
            Budget {
                default_ms: 5,
                max_ms: 5
            }
            .validate()
            .is_ok()
        );
    }
}
