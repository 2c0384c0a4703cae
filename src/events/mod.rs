//! The session's event log: strictly increasing sequence numbers, a bounded
//! ring of recent events for replay, and a fan-out where every client has its
//! own bounded queue, so a slow client slows only itself.

pub mod bus;
pub mod stream;

pub use bus::{Bus, BusConfig, Event, SubscribeError, Subscription};
