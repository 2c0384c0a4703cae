//! The operator's one error type. Each error names the step that failed and
//! has a category, the label of the `errors` metric.

/// What went wrong in a reconcile or at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error("{step}: {source}")]
    Kube {
        /// What the operator was doing, e.g. "apply Service".
        step: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A NotebookSession or AssetLease CRD is not installed or not established.
    #[error("{0}")]
    Crd(String),
    /// An object could not be encoded for the apiserver.
    #[error("encode {what}: {source}")]
    Encode {
        /// The object.
        what: &'static str,
        /// The encoder error.
        #[source]
        source: serde_json::Error,
    },
    /// A sidecar could not be asked (transport error, timeout, unexpected answer).
    #[error("sidecar: {0}")]
    Sidecar(String),
    /// Adding or removing a finalizer failed, or the reconcile inside it did.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Leader election failed or leadership was lost.
    #[error("leader election: {0}")]
    Leader(String),
    /// Start-up: configuration, listener.
    #[error("{0}")]
    Startup(String),
}

impl Error {
    /// Wraps a client error with the step it happened in.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { step, source }
    }

    /// The metrics label: what kind of failure this is.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                _ if is_namespace_terminating(source) => "namespace_terminating",
                kube::Error::Api(status) => match status.code {
                    403 => "forbidden",
                    404 => "not_found",
                    409 => "conflict",
                    422 => "invalid",
                    429 => "throttled",
                    500..=599 => "apiserver",
                    _ => "api",
                },
                _ => "transport",
            },
            Error::Sidecar(_) => "sidecar",
            Error::Finalizer(err) => match err.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.category(),
                _ => "finalizer",
            },
            Error::Crd(_) => "crd",
            Error::Encode { .. } => "encode",
            Error::Leader(_) => "leader_election",
            Error::Startup(_) => "startup",
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(err: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(err))
    }
}

/// Whether a client error is the apiserver's 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Whether a client error is the apiserver's 409 AlreadyExists.
pub fn is_already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// Whether the apiserver refused to create an object because its namespace
/// is being deleted (admission, not RBAC: the session goes with it soon).
pub fn is_namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 403
        && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Whether a client error is the apiserver's 409 Conflict (stale resourceVersion).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(json: &str) -> Error {
        let status: kube::core::Status = serde_json::from_str(json).expect("a Status");
        Error::kube("create Pod")(kube::Error::Api(status.boxed()))
    }

    #[test]
    fn a_terminating_namespace_is_not_an_rbac_refusal() {
        let terminating = api_error(
            r#"{"status":"Failure","code":403,"reason":"Forbidden","message":"pods \"a-kernel\" is forbidden: unable to create new content in namespace x because it is being terminated","details":{"name":"a-kernel","kind":"pods","causes":[{"reason":"NamespaceTerminating","message":"namespace x is being terminated","field":"metadata.namespace"}]}}"#,
        );
        assert_eq!(terminating.category(), "namespace_terminating");
        let rbac = api_error(
            r#"{"status":"Failure","code":403,"reason":"Forbidden","message":"pods is forbidden: User \"u\" cannot create resource \"pods\""}"#,
        );
        assert_eq!(rbac.category(), "forbidden");
    }
}
