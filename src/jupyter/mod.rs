//! The Jupyter messaging protocol (v5.3) over ZeroMQ: connection files,
//! signed wire frames, and a client holding the five channels of one kernel.

pub mod client;
pub mod connection;
pub mod message;
pub mod wire;
pub mod ws;

pub use client::{Channel, KernelClient, KernelMessage};
pub use connection::ConnectionInfo;
pub use message::{Header, Message};
pub use wire::{Signer, WireError};
