//! Turns a subscription into the frames a client receives: an optional `gap`
//! first, then the ring's replay, then live events, and a final `gap` when the
//! client was cut off for falling behind. Sequence numbers on one connection
//! only ever increase.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use serde_json::json;

use super::bus::{Event, Subscription};
use crate::store::Reader;

/// Most execution ids listed in one `gap` event.
const GAP_LIST_LIMIT: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Frame {
    /// The SSE `id:`; `None` for the final cut-off notice, so that a
    /// reconnect with `Last-Event-ID` resumes after the last real event.
    pub id: Option<u64>,
    pub json: String,
}

impl Frame {
    fn of(ev: &Event) -> Frame {
        Frame {
            id: Some(ev.seq),
            json: ev.json.clone(),
        }
    }
}

enum Phase {
    Gap,
    Replay(std::vec::IntoIter<Arc<Event>>),
    Live,
    Done,
}

struct St {
    sub: Subscription,
    reader: Reader,
    phase: Phase,
    last: u64,
}

pub fn frames(mut sub: Subscription, reader: Reader, since: u64) -> impl Stream<Item = Frame> + Send {
    let replay = std::mem::take(&mut sub.replay);
    let st = St {
        phase: if sub.gap.is_some() {
            Phase::Gap
        } else {
            Phase::Replay(replay.clone().into_iter())
        },
        sub,
        reader,
        last: since,
    };
    let replay_after_gap = replay;
    futures::stream::unfold(
        (st, Some(replay_after_gap)),
        |(mut st, mut pending_replay)| async move {
            loop {
                match &mut st.phase {
                    Phase::Gap => {
                        let (from, to) = st.sub.gap.unwrap_or((st.last + 1, st.last));
                        let executions = st
                            .reader
                            .touched_since(from.saturating_sub(1), GAP_LIST_LIMIT)
                            .await
                            .unwrap_or_default();
                        let truncated = executions.len() as u32 >= GAP_LIST_LIMIT;
                        st.last = to;
                        st.phase = Phase::Replay(pending_replay.take().unwrap_or_default().into_iter());
                        let json = json!({
                            "seq": to, "type": "gap", "from_seq": from, "to_seq": to,
                            "reason": "dropped_from_ring", "executions": executions, "truncated": truncated,
                        });
                        return Some((
                            Frame {
                                id: Some(to),
                                json: json.to_string(),
                            },
                            (st, pending_replay),
                        ));
                    }
                    Phase::Replay(it) => match it.next() {
                        Some(ev) if ev.seq > st.last => {
                            st.last = ev.seq;
                            return Some((Frame::of(&ev), (st, pending_replay)));
                        }
                        Some(_) => continue,
                        None => st.phase = Phase::Live,
                    },
                    Phase::Live => match st.sub.rx.recv().await.inspect(|ev| {
                        st.sub.queued_bytes.fetch_sub(ev.bytes(), Ordering::AcqRel);
                    }) {
                        Some(ev) if ev.seq > st.last => {
                            st.last = ev.seq;
                            return Some((Frame::of(&ev), (st, pending_replay)));
                        }
                        Some(_) => continue,
                        None => {
                            st.phase = Phase::Done;
                            if st.sub.cut.load(Ordering::Acquire) {
                                let json = json!({
                                    "type": "gap", "reason": "slow_client", "from_seq": st.last + 1,
                                    "resume": format!("reconnect with since={}", st.last),
                                });
                                return Some((
                                    Frame {
                                        id: None,
                                        json: json.to_string(),
                                    },
                                    (st, pending_replay),
                                ));
                            }
                            return None;
                        }
                    },
                    Phase::Done => return None,
                }
            }
        },
    )
}
