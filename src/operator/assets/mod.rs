//! AssetLeases: the operator's half of guarantee 6, "an asset is deleted only
//! when its lease expired and nothing references it".
//!
//! - [`decide`]: pure lease decisions (plan, verdict, release) and conditions;
//! - [`desired`]: pure, the leases a session's asset index calls for;
//! - [`controller`]: the AssetLease controller, thin I/O around `decide`;
//! - [`sync`]: the session controller applies leases for new assets.

pub mod controller;
pub mod decide;
pub mod desired;
pub mod sync;

pub use controller::{LeaseContext, LeaseControllerConfig, SessionCaches};
pub use sync::LeaseSync;
