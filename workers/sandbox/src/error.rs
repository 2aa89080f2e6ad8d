//! Failures the sandbox answers, each rendered as a Kubernetes `Status` object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::types::ResourceType;

/// A failed API request: an HTTP code, a machine-readable reason and a message, as the
/// `Status` kind carries them.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str, kind: &str) -> Self {
        let mut details = json!({"name": name, "kind": kind});
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        self.details = Some(details);
        self
    }

    pub fn no_such_resource() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// An error about the object `name` of type `rt`: `{plural} {name:?} {message}`.
    fn about(
        code: StatusCode,
        reason: &'static str,
        rt: &ResourceType,
        name: &str,
        message: &str,
    ) -> Self {
        Self::new(
            code,
            reason,
            format!("{} {name:?} {message}", qualified(rt)),
        )
        .with_details(rt, name, &rt.plural)
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::about(StatusCode::NOT_FOUND, "NotFound", rt, name, "not found")
    }

    pub fn namespace_not_found(namespace: &str) -> Self {
        Self {
            details: Some(json!({"name": namespace, "kind": "namespaces"})),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces {namespace:?} not found"),
            )
        }
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::about(
            StatusCode::CONFLICT,
            "AlreadyExists",
            rt,
            name,
            "already exists",
        )
    }

    /// A write refused on `name`'s current state: `Operation cannot be fulfilled on …: {why}`.
    fn cannot_fulfil(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(rt)
            ),
        )
        .with_details(rt, name, &rt.plural)
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::cannot_fulfil(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn precondition_failed(rt: &ResourceType, name: &str, field: &str) -> Self {
        Self::cannot_fulfil(rt, name, &format!("precondition failed for {field}"))
    }

    pub fn invalid(rt: &ResourceType, name: &str, field: &str, cause: &str, message: &str) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} {name:?} is invalid: {field}: {message}", rt.kind),
        )
        .with_details(rt, name, &rt.kind);
        if let Some(details) = &mut error.details {
            details["causes"] = json!([{"reason": cause, "message": message, "field": field}]);
        }
        error
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A watch's resource version is older than what the server keeps (sent as an `ERROR`
    /// watch event, as real servers do).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the sandbox does not support the media type {content_type:?}"),
        )
    }

    /// The `Status` object a real API server would answer.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.status())).into_response()
    }
}

/// `configmaps` or `deployments.apps`, as Kubernetes messages name a resource.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}
