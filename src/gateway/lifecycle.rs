//! Creating, waiting for and deleting NotebookSessions on a caller's behalf:
//! the one path MCP's `create_session`/`delete_session` and the Jupyter
//! kernel API (`POST /api/kernels`, `DELETE /api/kernels/{id}`) share, so
//! the requester label, the per-user cap and the SubjectAccessReviews are
//! the same whichever door a session came through.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::ResourceExt;

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

    /// Refuses (`Limit`) when `user` already has as many live sessions as allowed.
    pub async fn check_cap(&self, user: &User) -> Result<(), GatewayError> {
        let cap = self.cfg.max_sessions_per_user;
        if cap == 0 {
            return Ok(());
        }
        let all: Api<NotebookSession> = Api::all(self.kube.clone());
        let selector = format!(
            "{}={}",
            sessions::REQUESTED_BY,
            sessions::requested_by_label(&user.username)
        );
        let list = all
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(GatewayError::kube("count your sessions"))?;
        let live = sessions::live_sessions_of(&list.items, &user.username);
        match sessions::over_cap(live, cap, &user.username) {
            Some(msg) => Err(GatewayError::Limit(msg)),
            None => Ok(()),
        }
    }

    /// Creates the NotebookSession `new` asks for in `ns`, once `user` may
    /// `create` there and is under the cap (held under the cap lock, so
    /// concurrent requests of this replica cannot pass it together).
    pub async fn create_session(
        &self,
        user: &User,
        ns: &str,
        new: &NewSession,
    ) -> Result<NotebookSession, GatewayError> {
        let obj = sessions::desired(new, ns, user).map_err(GatewayError::BadRequest)?;
        self.reviewer
            .authorize(user, Access::sessions("create", ns, None))
            .await?;
        let created = {
            let _guard = if self.cfg.max_sessions_per_user > 0 {
                Some(self.cap_lock.lock().await)
            } else {
                None
            };
            self.check_cap(user).await?;
            self.sessions_api(ns)
                .create(&PostParams::default(), &obj)
                .await
                .map_err(GatewayError::kube("create the NotebookSession"))?
        };
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
