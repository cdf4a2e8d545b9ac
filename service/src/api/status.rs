//! The one place an error becomes a gRPC status. Internal failures are logged here with their
//! source chain and answered with a bare "internal error": no detail of the store, the models or
//! the galleries reaches a caller.

use crate::core::AppError;
use tonic::Status;

/// The error and its sources, one line, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<AppError> for Status {
    fn from(e: AppError) -> Status {
        match e {
            AppError::InvalidArgument(m) => Status::invalid_argument(m),
            AppError::NotFound(m) => Status::not_found(m),
            AppError::PermissionDenied(m) => Status::permission_denied(m),
            AppError::FailedPrecondition(m) => Status::failed_precondition(m),
            AppError::Busy(m) => Status::resource_exhausted(m),
            e @ (AppError::Store(_) | AppError::Vision(_) | AppError::Gallery(_) | AppError::Internal(_)) => {
                tracing::error!(error = %chain(&e), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
