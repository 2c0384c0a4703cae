//! The asset files, once for HTTP and MCP: the catalog, an asset's content,
//! pins, and delete-only-if-unreferenced (guarantee 6). Every file is
//! reached through the confined workspace root; blocking file work runs off
//! the async runtime.

use std::path::PathBuf;

use super::Service;
use crate::assets::index::{check_references, RefCheck};
use crate::assets::name::{is_valid, mime_for_ext};
use crate::assets::ASSETS_DIR;
use crate::confined::{ConfinedError, Kind, WalkLimits};
use crate::store::StoreError;

/// Largest asset served whole (HTTP content, MCP `read_asset`).
pub const MAX_SERVE_BYTES: u64 = 256 << 20;
/// Most assets one catalog answer lists; the rest are counted.
pub const CATALOG_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{0:?} is not an asset name (<sha256>.<ext>)")]
    InvalidName(String),
    #[error("no asset {0}")]
    NotFound(String),
    #[error("asset {name} is {}", if *.pinned { "pinned" } else { "referenced" })]
    InUse {
        name: String,
        referenced_by: Vec<String>,
        pinned: bool,
    },
    #[error("cannot be sure that asset {name} is unreferenced, so it is kept: {}", .unsure.join("; "))]
    Unsure { name: String, unsure: Vec<String> },
    #[error("asset {0}")]
    Unreadable(ConfinedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the file task failed: {0}")]
    Task(String),
}

pub use crate::sidecar_api::{AssetEntry, Catalog, IndexProblem};

fn rel(name: &str) -> PathBuf {
    PathBuf::from(ASSETS_DIR).join(name)
}

fn checked(name: &str) -> Result<(), AssetError> {
    if is_valid(name) {
        Ok(())
    } else {
        Err(AssetError::InvalidName(name.chars().take(100).collect()))
    }
}

fn not_found_or(name: &str, e: ConfinedError) -> AssetError {
    match e {
        ConfinedError::NotFound(_) => AssetError::NotFound(name.to_string()),
        other => AssetError::Unreadable(other),
    }
}

/// The MIME type of an asset by its extension (without parameters).
pub fn mime_of(name: &str) -> String {
    let ext = name.rsplit('.').next().unwrap_or_default();
    mime_for_ext(ext)
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, AssetError> + Send + 'static,
    ) -> Result<T, AssetError> {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(AssetError::Task(e.to_string())))
    }

    /// Every asset file (regular files with asset names only), oldest first.
    pub async fn asset_catalog(&self) -> Result<Catalog, AssetError> {
        let pins = self.reader.pins().await?;
        let root = self.root.clone();
        let mut files = self
            .blocking(move || {
                let entries = match root.list(std::path::Path::new(ASSETS_DIR)) {
                    Ok(e) => e,
                    Err(ConfinedError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(AssetError::Unreadable(e)),
                };
                let mut out = Vec::new();
                for (name, kind) in entries {
                    if kind != Kind::File || !is_valid(&name) {
                        continue;
                    }
                    if let Ok(info) = root.info(&rel(&name)) {
                        if info.kind == Kind::File {
                            out.push((name, info));
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        files.sort_by(|a, b| a.1.modified.cmp(&b.1.modified).then_with(|| a.0.cmp(&b.0)));
        let truncated = files.len().saturating_sub(CATALOG_LIMIT);
        files.truncate(CATALOG_LIMIT);
        let assets = files
            .into_iter()
            .map(|(name, info)| AssetEntry {
                path: format!("{ASSETS_DIR}/{name}"),
                size: info.size,
                mime: mime_of(&name),
                created_at: crate::util::format_rfc3339(time::OffsetDateTime::from(info.modified)),
                referenced_by: self.assets.referenced_by(&name),
                pinned: pins.contains(&name),
                name,
            })
            .collect();
        let index_problems = self
            .assets
            .problems()
            .into_iter()
            .map(|(notebook, reason)| IndexProblem { notebook, reason })
            .collect();
        Ok(Catalog {
            assets,
            truncated,
            index_problems,
        })
    }

    /// An asset's bytes and MIME type, at most `limit` bytes.
    pub async fn asset_content(&self, name: &str, limit: u64) -> Result<(Vec<u8>, String), AssetError> {
        checked(name)?;
        let root = self.root.clone();
        let n = name.to_string();
        let bytes = self
            .blocking(move || {
                root.read(&rel(&n), limit)
                    .map(|(b, _)| b)
                    .map_err(|e| not_found_or(&n, e))
            })
            .await?;
        Ok((bytes, mime_of(name)))
    }

    /// Deletes the asset unless it is pinned, a notebook references it, or
    /// a notebook could not be read for sure. The references are read from
    /// disk under the workspace lock, which every notebook write of the
    /// sidecar also takes: a save that references the asset either finished
    /// before this check (refused) or starts after the file is gone.
    pub async fn delete_asset(&self, name: &str) -> Result<(), AssetError> {
        checked(name)?;
        let _guard = self.workspace_lock.lock().await;
        let root = self.root.clone();
        let n = name.to_string();
        self.blocking(move || root.info(&rel(&n)).map(drop).map_err(|e| not_found_or(&n, e)))
            .await?;
        let pinned = self.reader.pins().await?.contains(name);
        if pinned {
            return Err(AssetError::InUse {
                name: name.to_string(),
                referenced_by: self.assets.referenced_by(name),
                pinned,
            });
        }
        let root = self.root.clone();
        let n = name.to_string();
        let check: RefCheck = self
            .blocking(move || Ok(check_references(&root, &n, WalkLimits::default())))
            .await?;
        if !check.referenced_by.is_empty() {
            return Err(AssetError::InUse {
                name: name.to_string(),
                referenced_by: check.referenced_by,
                pinned,
            });
        }
        if !check.unsure.is_empty() {
            return Err(AssetError::Unsure {
                name: name.to_string(),
                unsure: check.unsure,
            });
        }
        let root = self.root.clone();
        let n = name.to_string();
        self.blocking(move || root.remove_file(&rel(&n)).map_err(|e| not_found_or(&n, e)))
            .await?;
        tracing::info!(asset = %name, "deleted an unreferenced asset");
        Ok(())
    }

    /// Pins (never deleted while pinned) or unpins an asset.
    pub async fn pin_asset(&self, name: &str, pinned: bool) -> Result<(), AssetError> {
        checked(name)?;
        if pinned {
            let root = self.root.clone();
            let n = name.to_string();
            self.blocking(move || match root.info(&rel(&n)) {
                Ok(i) if i.kind == Kind::File => Ok(()),
                Ok(_) => Err(AssetError::NotFound(n)),
                Err(e) => Err(not_found_or(&n, e)),
            })
            .await?;
        }
        self.writer.pin(name, pinned).await?;
        Ok(())
    }
}
