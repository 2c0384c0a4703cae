//! One long poll per running sidecar: `GET /v1/status?revision=R` answers
//! when what the operator copies into the session's status changed (an
//! execution queued, started or finished, the kernel's state or restarts,
//! readiness), and the session is then reconciled at once. This replaces
//! reading every Ready sidecar on a clock; `--status-interval` remains as a
//! rare fallback.
//!
//! A watch belongs to one kernel pod (by uid): a new pod replaces it, a
//! reconcile that finds no running sidecar ends it, and a sidecar that
//! stops answering ends it after a few tries (the pod's own watch events
//! bring the session back).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use tokio::sync::mpsc;

use super::backoff::backoff;
use super::builders;
use super::crd::NotebookSession;
use super::sidecar_client::SidecarClient;

/// How long one long poll waits for a change before it asks again.
pub const WAIT: Duration = Duration::from_secs(60);
/// Failed polls in a row after which a watch ends.
const MAX_FAILURES: u32 = 4;

type Key = ObjectRef<NotebookSession>;

struct Watch {
    pod_uid: String,
    ip: IpAddr,
    id: u64,
    task: tokio::task::AbortHandle,
}

/// The watches of every session with a running sidecar.
#[derive(Clone)]
pub struct SidecarWatches {
    client: SidecarClient,
    trigger: mpsc::UnboundedSender<Key>,
    watching: Arc<Mutex<(u64, HashMap<Key, Watch>)>>,
    wait: Duration,
}

impl SidecarWatches {
    /// Watches through `client`, each poll waiting at most `wait`; the
    /// stream yields the sessions whose sidecar status changed (for the
    /// controller's `reconcile_on`).
    pub fn new(client: SidecarClient, wait: Duration) -> (Self, impl Stream<Item = Key> + Send + 'static) {
        let (trigger, changes) = mpsc::unbounded_channel();
        let watches = Self {
            client,
            trigger,
            watching: Arc::default(),
            wait,
        };
        (
            watches,
            tokio_stream::wrappers::UnboundedReceiverStream::new(changes),
        )
    }

    fn watching(&self) -> MutexGuard<'_, (u64, HashMap<Key, Watch>)> {
        self.watching.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the sidecar of `pod` from `revision` (the status just read),
    /// unless it is followed already.
    pub fn watch(&self, session: Key, pod: &Pod, token: &str, revision: String) {
        let Ok(ip) = builders::sidecar_ip(pod, None) else {
            self.forget(&session);
            return;
        };
        let pod_uid = pod.uid().unwrap_or_default();
        let mut guard = self.watching();
        let (next_id, watching) = &mut *guard;
        if let Some(old) = watching.get(&session) {
            if old.pod_uid == pod_uid && old.ip == ip && !old.task.is_finished() {
                return;
            }
            old.task.abort();
        }
        *next_id += 1;
        let id = *next_id;
        let follow = follow(self.clone(), session.clone(), id, ip, token.to_string(), revision);
        let task = tokio::spawn(follow).abort_handle();
        watching.insert(
            session,
            Watch {
                pod_uid,
                ip,
                id,
                task,
            },
        );
    }

    /// Stops following the sidecar of `session`, if anything follows it.
    pub fn forget(&self, session: &Key) {
        if let Some(old) = self.watching().1.remove(session) {
            old.task.abort();
        }
    }

    /// Stops following every sidecar.
    pub fn stop_all(&self) {
        for (_, w) in self.watching().1.drain() {
            w.task.abort();
        }
    }

    /// A guard that stops following every sidecar when dropped (a leader's
    /// term ending).
    pub fn stop_all_on_drop(&self) -> StopAll {
        StopAll(self.clone())
    }

    /// Sessions followed now.
    pub fn len(&self) -> usize {
        self.watching().1.len()
    }

    /// Nothing is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A watch that ended on its own removes itself, unless it was replaced.
    fn ended(&self, session: &Key, id: u64) {
        let mut guard = self.watching();
        if guard.1.get(session).is_some_and(|w| w.id == id) {
            guard.1.remove(session);
        }
    }
}

async fn follow(
    watches: SidecarWatches,
    session: Key,
    id: u64,
    ip: IpAddr,
    token: String,
    mut revision: String,
) {
    let mut failures = 0;
    while failures < MAX_FAILURES {
        let asked = std::time::Instant::now();
        let answer = watches
            .client
            .status_after(ip, &token, &revision, watches.wait)
            .await;
        // Nothing changed, yet the answer came early: this sidecar does not
        // hold the poll (an older build); counted as a failure, so the
        // watch ends instead of asking in a tight loop.
        let answer = answer.and_then(|status| {
            let early = asked.elapsed() < watches.wait / 2;
            if early && status.current_revision() == revision {
                Err("the sidecar answered a long poll at once with nothing changed".to_string())
            } else {
                Ok(status)
            }
        });
        match answer {
            Ok(status) => {
                failures = 0;
                let now = status.current_revision();
                if now != revision {
                    tracing::debug!(session = %session.name, from = %revision, to = %now, "the sidecar's status changed");
                    revision = now;
                    if watches.trigger.send(session.clone()).is_err() {
                        break;
                    }
                }
            }
            Err(err) => {
                failures += 1;
                tracing::debug!(session = %session.name, failures, error = %err, "no answer to the status long poll");
                if failures < MAX_FAILURES {
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }
    watches.ended(&session, id);
}

/// See [`SidecarWatches::stop_all_on_drop`].
pub struct StopAll(SidecarWatches);

impl Drop for StopAll {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    use axum::extract::Query;
    use futures::StreamExt;

    use crate::sidecar_api::{KernelState, Status};

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-kernel", "namespace": "ns", "uid": uid},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .expect("a pod")
    }

    fn idle(completed: i64) -> Status {
        let mut status = Status::default();
        status.kernel.state = KernelState::Idle;
        status.queue.completed = completed;
        status.ready = true;
        status
    }

    /// A sidecar whose long poll answers at once with one more completed
    /// execution than the revision it was given had.
    async fn sidecar() -> u16 {
        let router = axum::Router::new().route(
            "/v1/status",
            axum::routing::get(|Query(q): Query<Map<String, String>>| async move {
                let known = q.get("revision").cloned().unwrap_or_default();
                let next = (0..100)
                    .find(|n| idle(*n).current_revision() == known)
                    .map_or(0, |n| n + 1);
                if next > 2 {
                    // Nothing changes any more: hold the poll as a sidecar would.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                axum::Json(idle(next))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        port
    }

    fn key() -> Key {
        ObjectRef::new("s").within("ns")
    }

    #[tokio::test]
    async fn each_change_of_the_sidecar_status_brings_the_session_back_once() {
        let port = sidecar().await;
        let client = SidecarClient::new(Duration::from_secs(2)).with_port(port);
        let (watches, changes) = SidecarWatches::new(client, Duration::from_secs(30));
        watches.watch(key(), &pod("u1"), "t", idle(0).current_revision());
        // The same pod again: still one watch, not two.
        watches.watch(key(), &pod("u1"), "t", idle(0).current_revision());
        let seen: Vec<Key> = tokio::time::timeout(Duration::from_secs(10), changes.take(2).collect())
            .await
            .expect("two changes within 10 s");
        assert_eq!(seen, [key(), key()]);
        assert_eq!(watches.len(), 1);
        watches.forget(&key());
        assert!(watches.is_empty());
    }

    #[tokio::test]
    async fn a_sidecar_that_does_not_answer_ends_its_watch() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = SidecarClient::new(Duration::from_millis(200)).with_port(port);
        let (watches, _changes) = SidecarWatches::new(client, Duration::from_secs(1));
        watches.watch(key(), &pod("u1"), "t", idle(0).current_revision());
        assert_eq!(watches.len(), 1);
        // Four refused connections, with a 1 s, 2 s and 4 s backoff between them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !watches.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(watches.is_empty(), "the watch of an unreachable sidecar ended");
    }
}
