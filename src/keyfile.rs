//! Key files: the log's private key (mode 0600, refused when others can read
//! it) and its public verifier key next to it (`<path>.pub`).

use portcullis_format::note::{NoteError, SignerKey};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is readable by group or others (mode {mode:o}); refusing to use it. Run: chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a private key: {source}")]
    Malformed { path: PathBuf, source: NoteError },
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("key name {0:?} is not allowed: {1}")]
    Name(String, NoteError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.to_path_buf(), source }
}

/// The path of the verifier key written next to a private key.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// Loads a private key, refusing a file that group or others can read.
///
/// # Errors
/// [`KeyFileError`] for a missing, too-open or malformed file.
pub fn load(path: &Path) -> Result<SignerKey, KeyFileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen { path: path.to_path_buf(), mode });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    SignerKey::parse(&text).map_err(|source| KeyFileError::Malformed { path: path.to_path_buf(), source })
}

/// Writes a private key with mode 0600 (created exclusively, then fsynced)
/// and its verifier key to `<path>.pub`.
///
/// # Errors
/// [`KeyFileError::Exists`] when either file exists, or an I/O failure.
pub fn write(path: &Path, key: &SignerKey) -> Result<(), KeyFileError> {
    let public = public_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(KeyFileError::Exists(p.to_path_buf()));
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    file.write_all(format!("{}\n", key.to_private_string()).as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    fs::write(&public, format!("{}\n", key.verifier())).map_err(io(&public))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Generates a new key named `name` and writes it to `path`.
///
/// # Errors
/// As [`write()`], or [`KeyFileError::Name`] for a bad name.
pub fn generate(path: &Path, name: &str) -> Result<SignerKey, KeyFileError> {
    // The key's name is the log's origin, which events limit to 255 bytes.
    if name.len() > 255 {
        return Err(KeyFileError::Name(name.to_string(), NoteError::BadKeyName("longer than 255 bytes".into())));
    }
    let key = SignerKey::generate(name).map_err(|e| KeyFileError::Name(name.to_string(), e))?;
    write(path, &key)?;
    Ok(key)
}
