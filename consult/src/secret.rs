//! The bearer-token secret: from `AUTH_JWT_SECRET`, or generated once into the data directory
//! so that the server and the `token` command agree without configuration.

use std::io::Write;
use std::path::Path;

use secrecy::SecretString;

const FILE_NAME: &str = "jwt-secret";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or write the token secret in the data directory")]
    Io(#[from] std::io::Error),
    #[error("no randomness available to generate the token secret")]
    Random,
    #[error("the token secret must be at least 32 characters")]
    TooShort,
}

/// The configured secret, or the one kept in `data_dir`, created on first use.
pub fn load_or_create(
    configured: Option<String>,
    data_dir: &Path,
) -> Result<SecretString, SecretError> {
    if let Some(secret) = configured {
        if secret.len() < 32 {
            return Err(SecretError::TooShort);
        }
        return Ok(SecretString::from(secret));
    }
    let path = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(SecretString::from(text.trim())),
        Ok(_) => return Err(SecretError::TooShort),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    consult_store::private_dir(data_dir)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| SecretError::Random)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::info!("generated a token secret in the data directory");
            Ok(SecretString::from(secret))
        }
        // Another process created it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            load_or_create(None, data_dir)
        }
        Err(err) => Err(err.into()),
    }
}
