//! Large outputs as files: offloading rich outputs past a size threshold to
//! content-addressed files under `assets/`, and knowing which notebooks
//! reference which asset, so that an asset is deleted only when nothing does.

pub mod index;
pub mod name;
pub mod offload;

pub use index::AssetIndex;
pub use offload::{offload, NewAsset};

/// Folder under the workspace that holds the asset files.
pub const ASSETS_DIR: &str = "assets";
