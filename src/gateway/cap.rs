//! The per-user session cap, made safe by the apiserver rather than by one
//! replica's memory: every gateway replica reserves a place in the user's
//! ledger before it creates or resumes a session, written under the
//! ledger's `resourceVersion`. Of two replicas counting at once, one write
//! wins and the other counts again, now seeing the winner's reservation.
//!
//! The ledgers are [`SHARDS`] `coordination.k8s.io` Leases in the gateway's
//! namespace, `<prefix>-0` … `<prefix>-15`, a user's by a digest of the
//! name: few enough that the chart's Role names each one (the gateway may
//! not touch another Lease there, such as the operator's leader Lease),
//! many enough that users rarely wait on each other.
//!
//! A user holds: their live sessions (listed fresh by the requester label,
//! whichever door they came through) plus the reservations no listed
//! session stands for yet. A reservation is dropped once its create or
//! resume is done; one whose gateway died in between expires after
//! [`RESERVATION_TTL`].

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::GatewayError;
use super::review::User;
use super::sessions::{self, is_live};
use crate::operator::crd::NotebookSession;

/// How many ledgers the users are spread over.
pub const SHARDS: u8 = 16;
/// Annotation of a ledger Lease: its reservations, as JSON.
pub const RESERVATIONS: &str = "notebook.dev/cap-reservations";
/// Annotation of a session created under a reservation: the reservation's id.
pub const RESERVATION: &str = "notebook.dev/cap-reservation";
/// How long a reservation counts when its gateway never dropped it.
pub const RESERVATION_TTL: Duration = Duration::from_secs(60);
/// Writes tried before a contended ledger is reported (each attempt is one
/// read, one list and one conditional write; a conflict means another
/// request was just served).
const ATTEMPTS: usize = 64;

/// One place in a user's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Random; the session created under it carries it as [`RESERVATION`].
    pub id: String,
    /// Whose place it is (a ledger holds the users of its shard).
    pub user: String,
    /// `namespace/name` of an existing session being resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Unix seconds after which it no longer counts.
    pub until: i64,
}

/// Whether session `s` is what reservation `r` was made for (and so is
/// counted by itself, when live, not by the reservation).
fn stands_for(s: &NotebookSession, r: &Reservation) -> bool {
    if s.annotations().get(RESERVATION) == Some(&r.id) {
        return true;
    }
    let key = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
    r.session.as_deref() == Some(key.as_str()) && is_live(s)
}

/// How many sessions `username` holds at `now`: live ones plus the
/// unexpired reservations no listed session stands for.
pub fn held(sessions: &[NotebookSession], reservations: &[Reservation], username: &str, now: i64) -> usize {
    let live = sessions::live_sessions_of(sessions, username);
    let pending = reservations
        .iter()
        .filter(|r| r.user == username && r.until > now)
        .filter(|r| !sessions.iter().any(|s| stands_for(s, r)))
        .count();
    live + pending
}

/// The ledger's reservations; a value that is not ours to read (edited by
/// hand) counts as none, and is overwritten by the next write.
pub fn reservations_of(lease: &Lease) -> Vec<Reservation> {
    let Some(text) = lease.annotations().get(RESERVATIONS) else {
        return Vec::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(lease = %lease.name_any(), error = %e, "the cap ledger's reservations are unreadable; starting it afresh");
        Vec::new()
    })
}

/// The Lease name of `username`'s ledger: `<prefix>-<shard>`, the shard
/// from a digest of the name.
pub fn ledger_name(prefix: &str, username: &str) -> String {
    let digest = Sha256::digest(username.as_bytes());
    format!("{prefix}-{}", digest[0] % SHARDS)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The ledgers, in one namespace.
#[derive(Clone)]
pub struct CapLedger {
    kube: kube::Client,
    leases: Api<Lease>,
    prefix: String,
    cap: usize,
}

impl CapLedger {
    pub fn new(kube: kube::Client, namespace: &str, prefix: &str, cap: usize) -> CapLedger {
        CapLedger {
            leases: Api::namespaced(kube.clone(), namespace),
            kube,
            prefix: prefix.to_string(),
            cap,
        }
    }

    /// A place for one more session of `user` (`resuming`: that existing
    /// session), or `Limit` when they hold the cap already. `None` when
    /// there is no cap.
    pub async fn reserve(
        &self,
        user: &User,
        resuming: Option<String>,
    ) -> Result<Option<Reservation>, GatewayError> {
        if self.cap == 0 {
            return Ok(None);
        }
        let name = ledger_name(&self.prefix, &user.username);
        for _ in 0..ATTEMPTS {
            let lease = self
                .leases
                .get_opt(&name)
                .await
                .map_err(GatewayError::kube("read the session-cap ledger"))?;
            let now = now();
            let mut list: Vec<Reservation> = lease.as_ref().map(reservations_of).unwrap_or_default();
            list.retain(|r| r.until > now);
            let sessions = self.sessions_of(user).await?;
            if let Some(msg) = sessions::over_cap(
                held(&sessions, &list, &user.username, now),
                self.cap,
                &user.username,
            ) {
                return Err(GatewayError::Limit(msg));
            }
            let mine = Reservation {
                id: uuid::Uuid::new_v4().simple().to_string(),
                user: user.username.clone(),
                session: resuming.clone(),
                until: now + RESERVATION_TTL.as_secs() as i64,
            };
            list.push(mine.clone());
            if self.write(&name, lease, &list).await? {
                return Ok(Some(mine));
            }
        }
        Err(GatewayError::NotReady(format!(
            "the session-cap ledger of {} stayed contended over {ATTEMPTS} attempts; try again",
            user.username
        )))
    }

    /// Drops `reservation` (its create or resume is done, or failed). A
    /// failure here only makes it count until it expires: said in the log.
    pub async fn release(&self, user: &User, reservation: &Reservation) {
        let name = ledger_name(&self.prefix, &user.username);
        for _ in 0..ATTEMPTS {
            let lease = match self.leases.get_opt(&name).await {
                Ok(Some(lease)) => lease,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(user = %user.username, error = %e, "could not drop a cap reservation; it expires on its own");
                    return;
                }
            };
            let now = now();
            let mut list = reservations_of(&lease);
            list.retain(|r| r.until > now && r.id != reservation.id);
            match self.write(&name, Some(lease), &list).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(user = %user.username, error = %e, "could not drop a cap reservation; it expires on its own");
                    return;
                }
            }
        }
    }

    /// The user's sessions in every namespace, by the requester label, read
    /// from the apiserver (not a cache).
    async fn sessions_of(&self, user: &User) -> Result<Vec<NotebookSession>, GatewayError> {
        let all: Api<NotebookSession> = Api::all(self.kube.clone());
        let selector = format!(
            "{}={}",
            sessions::REQUESTED_BY,
            sessions::requested_by_label(&user.username)
        );
        Ok(all
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(GatewayError::kube("count your sessions"))?
            .items)
    }

    /// Writes `list` as the ledger, conditional on `read` (create when there
    /// was none); `false` when another write came first.
    async fn write(
        &self,
        name: &str,
        read: Option<Lease>,
        list: &[Reservation],
    ) -> Result<bool, GatewayError> {
        let text = serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
        let result = match read {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        annotations: Some([(RESERVATIONS.to_string(), text)].into()),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                };
                self.leases.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.annotations_mut().insert(RESERVATIONS.into(), text);
                self.leases.replace(name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // 409: written (or created) by another request since our read.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(GatewayError::kube("write the session-cap ledger")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::NotebookSessionSpec;

    fn session(name: &str, user: &str, reservation: Option<&str>, suspended: bool) -> NotebookSession {
        let mut s = NotebookSession::new(
            name,
            NotebookSessionSpec {
                suspend: suspended,
                ..NotebookSessionSpec::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.annotations_mut()
            .insert(sessions::REQUESTED_BY.into(), user.into());
        if let Some(id) = reservation {
            s.annotations_mut().insert(RESERVATION.into(), id.into());
        }
        s
    }

    fn reservation(id: &str, session: Option<&str>, until: i64) -> Reservation {
        Reservation {
            id: id.into(),
            user: "ann".into(),
            session: session.map(Into::into),
            until,
        }
    }

    #[test]
    fn a_reservation_counts_until_its_session_is_listed_and_not_after_it_expired() {
        let pending = [reservation("r1", None, 100)];
        assert_eq!(held(&[], &pending, "ann", 50), 1);
        assert_eq!(held(&[], &pending, "ann", 100), 0, "expired");
        let created = [session("a", "ann", Some("r1"), false)];
        assert_eq!(
            held(&created, &pending, "ann", 50),
            1,
            "counted once, as a live session"
        );
        let other = [session("b", "ann", None, false)];
        assert_eq!(held(&other, &pending, "ann", 50), 2);
        let someone_else = [session("c", "bob", None, false)];
        assert_eq!(held(&someone_else, &pending, "ann", 50), 1);
        assert_eq!(
            held(&someone_else, &pending, "bob", 50),
            1,
            "ann's place is not bob's"
        );
    }

    #[test]
    fn a_resume_reservation_counts_while_its_session_is_still_suspended() {
        let pending = [reservation("r2", Some("ns/a"), 100)];
        let suspended = [session("a", "ann", None, true)];
        assert_eq!(held(&suspended, &pending, "ann", 50), 1);
        let resumed = [session("a", "ann", None, false)];
        assert_eq!(held(&resumed, &pending, "ann", 50), 1);
    }

    #[test]
    fn the_ledger_reads_its_own_writes_and_starts_afresh_from_anything_else() {
        let list = vec![reservation("r1", None, 7), reservation("r2", Some("ns/a"), 9)];
        let mut lease = Lease::default();
        lease
            .annotations_mut()
            .insert(RESERVATIONS.into(), serde_json::to_string(&list).expect("json"));
        assert_eq!(reservations_of(&lease), list);
        lease
            .annotations_mut()
            .insert(RESERVATIONS.into(), "not json".into());
        assert_eq!(reservations_of(&lease), Vec::new());
        assert_eq!(reservations_of(&Lease::default()), Vec::new());
    }

    #[test]
    fn a_user_has_one_of_the_sixteen_ledgers() {
        let names: std::collections::BTreeSet<String> = (0..200)
            .map(|i| ledger_name("rel-gateway-cap", &format!("system:serviceaccount:ns:agent{i}")))
            .collect();
        let all: std::collections::BTreeSet<String> =
            (0..SHARDS).map(|i| format!("rel-gateway-cap-{i}")).collect();
        assert_eq!(names, all, "200 users reach every shard and nothing else");
        assert_eq!(ledger_name("p", "ann"), ledger_name("p", "ann"));
    }
}
