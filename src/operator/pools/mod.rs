//! NotebookPools: warm kernel pods kept ready from a session template, and
//! the claim that hands one of them to a NotebookSession, once, ever.
//!
//! [`desired`] builds (warm pods, the pool Secret, the claim patch) and
//! [`decide`] decides (which pod to claim, how many to create or delete, the
//! pool's status), both pure; [`controller`] carries it out.

pub mod controller;
pub mod decide;
pub mod desired;
