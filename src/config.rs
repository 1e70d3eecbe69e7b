//! The one configuration file (TOML). Every key is optional; command-line
//! flags override the file; unknown keys are refused with their name.
//!
//! ```toml
//! data_dir = "portcullis-data"       # ledger.db and the log key live here
//! listen = "127.0.0.1:8480"          # HTTP address
//! origin = "portcullis.example.com/ledger"  # the log's name, used when the key is first generated
//! checkpoint_interval_secs = 1       # how often a checkpoint is signed while the ledger grows
//! policy = "policy.yaml"             # the access policy; without it the workflow API answers 503
//! tokens = "portcullis-data/tokens"  # static bearer tokens, stored as hashes
//! store = "postgres://portcullis@db.internal/portcullis"  # default: SQLite in data_dir/ledger.db
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub origin: Option<String>,
    pub checkpoint_interval_secs: Option<u64>,
    pub policy: Option<PathBuf>,
    pub tokens: Option<PathBuf>,
    /// The ledger store's URL (`postgres://...`, `sqlite:PATH`); see `store::open_url`.
    pub store: Option<String>,
    /// Outbound webhooks (`[[webhooks]]` tables); see `notify`.
    pub webhooks: Option<Vec<crate::notify::Webhook>>,
    /// OIDC bearer tokens (`[oidc]`); see `oidc`.
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// The clusters grants are applied to (`[reconciler]`); see `reconciler::config`.
    pub reconciler: Option<crate::reconciler::config::ReconcilerConfig>,
    /// Witnesses every checkpoint is sent to (`[[witnesses]]`: `url`, `vkey`); see `witness`.
    pub witnesses: Option<Vec<crate::witness::WitnessTarget>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The settings `serve` runs with, after file and flags are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub origin: Option<String>,
    pub checkpoint_interval_secs: u64,
    pub policy: Option<PathBuf>,
    tokens: Option<PathBuf>,
    /// The ledger store's URL; `None` is the embedded SQLite file in the data directory.
    pub store: Option<String>,
    pub webhooks: Vec<crate::notify::Webhook>,
    pub oidc: Option<crate::oidc::OidcConfig>,
    pub reconciler: Option<crate::reconciler::config::ReconcilerConfig>,
    pub witnesses: Vec<crate::witness::WitnessTarget>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
pub const DEFAULT_DATA_DIR: &str = "portcullis-data";

impl ServeConfig {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ledger.db")
    }

    /// The URL of the ledger store: the configured one, or the SQLite file in the data directory.
    pub fn store_url(&self) -> String {
        self.store.clone().unwrap_or_else(|| format!("sqlite:{}", self.database_path().display()))
    }

    /// Whether a ledger may already exist: always for a configured store (a
    /// shared database), else when the SQLite file exists.
    pub fn ledger_may_exist(&self) -> bool {
        self.store.is_some() || self.database_path().exists()
    }

    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("log.key")
    }

    /// The static tokens file (default: `tokens` in the data directory).
    pub fn tokens_path(&self) -> PathBuf {
        self.tokens.clone().unwrap_or_else(|| self.data_dir.join("tokens"))
    }
}

/// Reads and checks a config file.
///
/// # Errors
/// [`ConfigError`] naming the file, and for syntax errors the line and column.
pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })
}

/// Merges the file (if any) with flags (which win) and checks the result.
///
/// # Errors
/// [`ConfigError::Invalid`] for out-of-range values.
pub fn merge(file: FileConfig, flags: FileConfig) -> Result<ServeConfig, ConfigError> {
    let FileConfig {
        data_dir,
        listen,
        origin,
        checkpoint_interval_secs,
        policy,
        tokens,
        store,
        webhooks: _,
        oidc: _,
        reconciler: _,
        witnesses: _,
    } = flags;
    let witnesses = file.witnesses.clone().unwrap_or_default();
    for witness in &witnesses {
        witness.validate().map_err(ConfigError::Invalid)?;
    }
    if let Some(reconciler) = &file.reconciler {
        reconciler.validate().map_err(ConfigError::Invalid)?;
    }
    let webhooks = file.webhooks.clone().unwrap_or_default();
    for webhook in &webhooks {
        webhook.validate().map_err(ConfigError::Invalid)?;
    }
    let interval = checkpoint_interval_secs.or(file.checkpoint_interval_secs).unwrap_or(1);
    if !(1..=86_400).contains(&interval) {
        return Err(ConfigError::Invalid(format!("checkpoint_interval_secs must be 1 to 86400, not {interval}")));
    }
    let origin = origin.or(file.origin);
    if let Some(origin) = &origin
        && (!portcullis_format::note::valid_key_name(origin) || origin.len() > 255)
    {
        return Err(ConfigError::Invalid(format!(
            "origin {origin:?} must be 1 to 255 bytes without spaces or '+', e.g. portcullis.example.com/ledger"
        )));
    }
    Ok(ServeConfig {
        data_dir: data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        listen: listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses")),
        origin,
        checkpoint_interval_secs: interval,
        policy: policy.or(file.policy),
        tokens: tokens.or(file.tokens),
        store: store.or(file.store),
        webhooks,
        oidc: file.oidc.clone(),
        reconciler: file.reconciler.clone(),
        witnesses,
    })
}
