//! NotebookPools: warm kernel pods kept ready from a session template, and
//! the claim that hands one of them to a NotebookSession, once, ever.
//!
//! [`desired`] builds (warm pods, the pool Secret, the claim patch) and
//! [`decide`] decides (which pod to claim, how many to create or delete, the
//! pool's status), both pure; [`controller`] carries it out; [`recent`]
//! keeps a replica from claiming twice for one session while its pod cache
//! lags its own claim.

pub mod controller;
pub mod decide;
pub mod desired;
pub mod recent;
