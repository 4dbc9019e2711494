//! How the service says no: [`ServiceError`], in the service's own terms (`Node`,
//! `Directory`). The API server turns it into an [`ApiError`](crate::api::ApiError), a code
//! and a sentence, in one place (`server.rs`); nothing below the server builds API errors.

use crate::ids::InvalidName;
use crate::store::StoreError;

/// Why a request of the service was not done. Each message says what happened and what to
/// do; nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Malformed or invalid input.
    #[error("{0}")]
    Invalid(String),
    /// No such agent, node, topic or message.
    #[error("{0}")]
    NotFound(String),
    /// The name matches several agents or nodes; the message lists them.
    #[error("{0}")]
    Ambiguous(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The network or a peer cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot do it (disk full, I/O).
    #[error("{0}")]
    Storage(String),
    /// Too much at once.
    #[error("{0}")]
    Busy(String),
    /// Over a rate limit; the message says when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// Not allowed (not a member, refused, a used or expired join code).
    #[error("{0}")]
    Denied(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name that is not valid.
    #[error(transparent)]
    Name(#[from] InvalidName),
}

impl From<crate::api::page::EntryTooLarge> for ServiceError {
    fn from(e: crate::api::page::EntryTooLarge) -> Self {
        ServiceError::TooLarge(e.to_string())
    }
}

impl ServiceError {
    /// [`ServiceError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    /// [`ServiceError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// [`ServiceError::Ambiguous`].
    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self::Ambiguous(message.into())
    }
    /// [`ServiceError::TooLarge`].
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::TooLarge(message.into())
    }
    /// [`ServiceError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
    /// [`ServiceError::Storage`].
    pub fn storage(message: impl Into<String>) -> Self {
        Self::Storage(message.into())
    }
    /// [`ServiceError::Busy`].
    pub fn busy(message: impl Into<String>) -> Self {
        Self::Busy(message.into())
    }
    /// [`ServiceError::RateLimited`].
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::RateLimited(message.into())
    }
    /// [`ServiceError::Denied`].
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }
    /// [`ServiceError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// No such thing (from the store too: an unknown agent or message).
    pub fn is_not_found(&self) -> bool {
        use crate::store::StoreError as S;
        matches!(
            self,
            ServiceError::NotFound(_) | ServiceError::Store(S::UnknownAgent(_) | S::UnknownMessage(_))
        )
    }
}
