//! The one condition engine of both controllers: how a `metav1.Condition`
//! is made from what a decision says, and the transitions worth an Event.
//!
//! The rules, for sessions and leases alike: `lastTransitionTime` is kept
//! while a condition's status stays the same and is otherwise now, floored to
//! the second (the wire format has seconds, so a floored time compares equal
//! to its round trip and an unchanged status is not written again); a message
//! is cut to [`MAX_MESSAGE`] bytes on a character boundary.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Longest condition message kept, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// One condition as a decision states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// CamelCase type, e.g. `Ready`.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// For people.
    pub message: String,
}

/// A [`Cond`].
pub fn cond(type_: &'static str, status: &'static str, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The last whole second at or before `t`: what a `metav1.Time` keeps of it.
pub fn floor_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() < 0 {
        Timestamp::from_second(t.as_second() - 1).unwrap_or(t)
    } else {
        Timestamp::from_second(t.as_second()).unwrap_or(t)
    }
}

fn make(previous: Option<&Condition>, new: Cond, generation: Option<i64>, now: Timestamp) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == new.status => p.last_transition_time.clone(),
        _ => Time(floor_second(now)),
    };
    let mut message = new.message;
    message.truncate(crate::util::prefix(&message, MAX_MESSAGE).len());
    Condition {
        type_: new.type_.into(),
        status: new.status.into(),
        reason: new.reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Exactly the conditions `new`, in its order, each keeping its transition
/// time from `old` when its status did not change.
pub fn merge(old: &[Condition], new: Vec<Cond>, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    new.into_iter()
        .map(|c| make(find(old, c.type_), c, generation, now))
        .collect()
}

/// Sets one condition in place; a type not there yet is appended, so the
/// order is stable.
pub fn set(conditions: &mut Vec<Condition>, generation: Option<i64>, now: Timestamp, new: Cond) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => *old = make(Some(old), new, generation, now),
        None => conditions.push(make(None, new, generation, now)),
    }
}

/// The condition of a type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A change between two statuses worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For people.
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a test time")
    }

    #[test]
    fn a_new_status_moves_the_transition_time_to_now_floored_and_an_unchanged_one_keeps_it() {
        let first = merge(
            &[],
            vec![cond("Ready", "False", "Starting", "")],
            Some(1),
            at("2026-12-01T10:00:00.750Z"),
        );
        assert_eq!(first[0].last_transition_time, Time(at("2026-12-01T10:00:00Z")));
        let same = merge(
            &first,
            vec![cond("Ready", "False", "Pulling", "")],
            Some(2),
            at("2026-12-01T10:00:09Z"),
        );
        assert_eq!(same[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(
            (same[0].reason.as_str(), same[0].observed_generation),
            ("Pulling", Some(2))
        );
        let changed = merge(
            &same,
            vec![cond("Ready", "True", "KernelReady", "")],
            Some(2),
            at("2026-12-01T10:00:12.1Z"),
        );
        assert_eq!(changed[0].last_transition_time, Time(at("2026-12-01T10:00:12Z")));
    }

    #[test]
    fn merge_keeps_exactly_the_new_types_and_set_appends_an_unknown_type() {
        let now = at("2026-12-01T10:00:00Z");
        let old = merge(
            &[],
            vec![cond("A", "True", "R", ""), cond("B", "True", "R", "")],
            None,
            now,
        );
        let merged = merge(&old, vec![cond("B", "True", "R", "")], None, now);
        assert_eq!(merged.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["B"]);
        let mut set_in = old;
        set(&mut set_in, None, now, cond("C", "False", "R", ""));
        set(&mut set_in, None, now, cond("A", "False", "S", ""));
        let types: Vec<_> = set_in
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(types, [("A", "False"), ("B", "True"), ("C", "False")]);
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let made = merge(
            &[],
            vec![cond("Ready", "False", "R", long)],
            None,
            at("2026-12-01T10:00:00Z"),
        );
        assert!(made[0].message.len() <= MAX_MESSAGE && made[0].message.len() >= MAX_MESSAGE - 1);
        assert!(made[0].message.chars().all(|c| c == 'é'));
    }
}
