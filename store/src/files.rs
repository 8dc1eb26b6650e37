//! Files that hold personal data (the SQLite database, the outbox, the token secret) are made
//! readable by their owner only, whatever the umask: directories 0700, files 0600.

use std::io;
use std::path::Path;

/// Creates `dir` (and its missing parents) readable by the owner only. A directory that exists
/// already is left as it is.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates the empty file `path` readable and writable by the owner only, unless it exists.
/// Its parent directory is created with [`private_dir`].
pub fn private_file(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Creates the SQLite database file of `filename` owner-only before SQLite opens it: SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so they are owner-only too.
/// Best effort: if the file cannot be made here, SQLite reports why when it tries.
pub(crate) fn prepare_sqlite_file(filename: &Path, url: &str) {
    let in_memory = filename.as_os_str().is_empty()
        || filename == Path::new(":memory:")
        || url.contains("mode=memory");
    if !in_memory {
        let _ = private_file(filename);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default()
    }

    #[test]
    fn directories_and_files_are_owner_only_and_existing_files_are_kept() {
        let root = std::env::temp_dir().join(format!("consult-files-{}", std::process::id()));
        let file = root.join("a").join("b").join("data.db");
        private_file(&file).expect("create");
        assert_eq!(mode(&root.join("a").join("b")), 0o700);
        assert_eq!(mode(&file), 0o600);
        std::fs::write(&file, b"kept").expect("write");
        private_file(&file).expect("exists already");
        assert_eq!(std::fs::read(&file).ok().as_deref(), Some(&b"kept"[..]));
        let _ = std::fs::remove_dir_all(&root);
    }
}
