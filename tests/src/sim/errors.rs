//! API errors as `metav1.Status` objects, so kube's `Error::Api` and kubectl see the reason and code a real
//! API server would send.

use serde_json::{json, Value};

use super::resources::ResourceType;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<Value>,
    /// A Status passed on whole (an admission webhook's denial), whose reason may be any string.
    status: Option<Value>,
}

/// The `metav1.StatusReason` values, so a Status passed on whole keeps a typed reason where it has one.
const KNOWN_REASONS: &[&str] = &[
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "ServerTimeout",
    "Timeout",
    "TooManyRequests",
    "BadRequest",
    "MethodNotAllowed",
    "NotAcceptable",
    "RequestEntityTooLarge",
    "UnsupportedMediaType",
    "InternalError",
    "Expired",
    "ServiceUnavailable",
];

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, status: None }
    }

    /// 500 InternalError the way kube-apiserver's `NewInternalError(err)` words it.
    pub fn internal(cause: impl Into<String>) -> Self {
        let cause = cause.into();
        let mut err = Self::new(500, "InternalError", format!("Internal error occurred: {cause}"));
        err.details = Some(json!({"causes": [{"message": cause}]}));
        err
    }

    /// A complete `metav1.Status` sent to the client as it is (its `code` must already be an error code).
    pub fn from_status(status: Value) -> Self {
        let code = status["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
        let reason = status["reason"].as_str().unwrap_or_default();
        let reason = KNOWN_REASONS.iter().copied().find(|r| *r == reason).unwrap_or("");
        let message = status["message"].as_str().unwrap_or_default().to_string();
        Self { code, reason, message, details: None, status: Some(status) }
    }

    fn about(mut self, res: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        self
    }

    pub fn not_found(res: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified_plural())).about(res, name)
    }

    pub fn already_exists(res: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", res.qualified_plural()))
            .about(res, name)
    }

    pub fn conflict(res: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", res.qualified_plural());
        Self::new(409, "Conflict", message).about(res, name)
    }

    pub fn stale(res: &ResourceType, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(res: &ResourceType, name: &str, field_error: &str) -> Self {
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {field_error}", res.kind)).about(res, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The resourceVersion a watch asked for is older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        if let Some(status) = &self.status {
            return status.clone();
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.message, self.code, self.reason)
    }
}

impl std::error::Error for ApiError {}
