//! The operator: custom resources, pure builders of the objects a session owns,
//! and the controllers that apply them.

pub mod builders;
pub mod crd;
pub mod status;

#[cfg(test)]
mod fixtures;
