//! Creating, waiting for and deleting NotebookSessions on a caller's behalf:
//! the one path MCP's `create_session`/`delete_session` and the Jupyter
//! kernel API (`POST /api/kernels`, `DELETE /api/kernels/{id}`) share, so
//! the requester label, the per-user cap and the SubjectAccessReviews are
//! the same whichever door a session came through.

use std::time::Duration;

use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::ResourceExt;

use super::cap;
use super::error::GatewayError;
use super::review::{Access, User};
use super::sessions::{self, NewSession};
use super::Gateway;
use crate::operator::crd::NotebookSession;

/// How a wait for a new session ended.
#[derive(Debug)]
pub enum Settled {
    Ready(Box<NotebookSession>),
    /// Phase Failed: it cannot run as specified.
    Failed(Box<NotebookSession>),
    /// Deleted while starting.
    Deleted,
    /// Neither Ready nor Failed in time; the latest object, if it could be read.
    TimedOut(Option<Box<NotebookSession>>),
}

impl Gateway {
    pub fn sessions_api(&self, ns: &str) -> Api<NotebookSession> {
        Api::namespaced(self.kube.clone(), ns)
    }

    /// Creates the NotebookSession `new` asks for in `ns`, once `user` may
    /// `create` there and holds a place under the cap (reserved through the
    /// apiserver, so requests to different replicas cannot pass it together).
    pub async fn create_session(
        &self,
        user: &User,
        ns: &str,
        new: &NewSession,
    ) -> Result<NotebookSession, GatewayError> {
        let mut obj = sessions::desired(new, ns, user).map_err(GatewayError::BadRequest)?;
        self.reviewer
            .authorize(user, Access::sessions("create", ns, None))
            .await?;
        let reservation = self.cap.reserve(user, None).await?;
        if let Some(r) = &reservation {
            obj.annotations_mut()
                .insert(cap::RESERVATION.into(), r.id.clone());
        }
        let created = self
            .sessions_api(ns)
            .create(&PostParams::default(), &obj)
            .await
            .map_err(GatewayError::kube("create the NotebookSession"));
        if let Some(r) = &reservation {
            self.cap.release(user, r).await;
        }
        let created = created?;
        tracing::info!(session = %format!("{ns}/{}", created.name_any()), user = %user.username,
                       "session created");
        Ok(created)
    }

    /// Waits up to `wait` until session `ns/name` is Ready or Failed (or gone).
    pub async fn wait_settled(&self, ns: &str, name: &str, wait: Duration) -> Result<Settled, GatewayError> {
        let api = self.sessions_api(ns);
        let done =
            |s: Option<&NotebookSession>| s.is_none_or(|s| sessions::is_ready(s) || sessions::is_failed(s));
        match tokio::time::timeout(wait, await_condition(api.clone(), name, done)).await {
            Ok(Ok(Some(s))) if sessions::is_ready(&s) => Ok(Settled::Ready(Box::new(s))),
            Ok(Ok(Some(s))) => Ok(Settled::Failed(Box::new(s))),
            Ok(Ok(None)) => Ok(Settled::Deleted),
            Ok(Err(e)) => Err(GatewayError::Watch(format!("watching session {ns}/{name}: {e}"))),
            Err(_) => Ok(Settled::TimedOut(
                api.get_opt(name).await.ok().flatten().map(Box::new),
            )),
        }
    }

    /// Deletes session `ns/name` (foreground: it stays until what it owns is
    /// gone) and, with a `wait`, waits that long for it to be gone. `user`
    /// must have been authorized to `delete` it. Answers whether it is gone.
    pub async fn delete_session(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        wait: Duration,
    ) -> Result<bool, GatewayError> {
        let api = self.sessions_api(ns);
        let uid = api
            .delete(name, &DeleteParams::foreground())
            .await
            .map_err(GatewayError::kube("delete the NotebookSession"))?
            .either(|s| s.uid(), |_| None);
        self.upstreams.forget(ns, name);
        tracing::info!(session = %format!("{ns}/{name}"), user = %user.username, "session deleted");
        Ok(match uid {
            None => true,
            Some(_) if wait.is_zero() => false,
            Some(uid) => matches!(
                tokio::time::timeout(wait, await_condition(api, name, conditions::is_deleted(&uid))).await,
                Ok(Ok(_))
            ),
        })
    }
}
