//! The error every request can end with: a kind a caller can act on, a
//! message, and optional details. The kind decides the HTTP status, here and
//! nowhere else.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kind of failure, as the HTTP API reports it in `error.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    NotFound,
    TooLarge,
    BuildFailed,
    ScriptError,
    Crashed,
    OutOfMemory,
    Overloaded,
    Timeout,
    /// A failure of the server itself (disk, database); the log has the detail.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidRequest,
        ErrorKind::NotFound,
        ErrorKind::TooLarge,
        ErrorKind::BuildFailed,
        ErrorKind::ScriptError,
        ErrorKind::Crashed,
        ErrorKind::OutOfMemory,
        ErrorKind::Overloaded,
        ErrorKind::Timeout,
        ErrorKind::Internal,
    ];

    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::BuildFailed => 422,
            ErrorKind::ScriptError => 500,
            ErrorKind::Crashed => 502,
            ErrorKind::OutOfMemory => 502,
            ErrorKind::Overloaded => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::BuildFailed => "build_failed",
            ErrorKind::ScriptError => "script_error",
            ErrorKind::Crashed => "crashed",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error as a caller sees it: `{"error": {"kind", "message", ...details}}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), details: Map::new() }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn not_found(name: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("script {name:?} not found")).with("script", name)
    }

    /// Wraps a server-side failure. The full cause chain goes to the log; the
    /// caller gets the top-level message only.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        Self::new(ErrorKind::Internal, error.to_string())
    }

    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("kind".into(), self.kind.as_str().into());
        error.insert("message".into(), self.message.clone().into());
        for (key, value) in &self.details {
            error.insert(key.clone(), value.clone());
        }
        serde_json::json!({ "error": error })
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::internal(error)
    }
}
