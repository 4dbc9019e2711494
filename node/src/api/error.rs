//! How the daemon says no: error codes and messages.

use super::*;

/// Error codes of the local API.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or invalid input.
    BadRequest,
    /// Unknown agent, node, topic or message.
    NotFound,
    /// The name matches several agents or nodes; the message lists them.
    Ambiguous,
    /// Over a size limit.
    TooLarge,
    /// The network or a peer could not do it now.
    Unavailable,
    /// The store could not do it (disk full, I/O); nothing was changed.
    Storage,
    /// Too much at once; retry.
    Busy,
    /// Over a rate limit; retry later (the message says when).
    RateLimited,
    /// Not allowed (not a member, refused, a used or expired join code).
    Denied,
    /// A bug.
    Internal,
}

/// An error answer: a code for programs and a sentence for people.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of error.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl ErrorCode {
    /// The code's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Ambiguous => "Ambiguous",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Storage => "Storage",
            ErrorCode::Busy => "Busy",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::Denied => "Denied",
            ErrorCode::Internal => "Internal",
        }
    }
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `BadRequest`.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}
