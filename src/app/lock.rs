//! One sender per outbox: the exclusive lock on `state_dir/callhook.lock`
//! that `callhook run` holds for its lifetime, and so do the one-shot
//! commands that send from the outbox.

use super::AppError;

/// Takes the exclusive lock on `dir/callhook.lock` (created with the dir,
/// mode 0700; the lock file 0600):
/// held by `callhook run` for its lifetime, and by one-shot commands that
/// send from the outbox (`replay --config`, `backfill --deliver`, `outbox recover`). Dropping
/// the file releases it (so does the OS when the process dies).
pub fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, AppError> {
    let io = |source| AppError::LockFile {
        dir: dir.to_path_buf(),
        source,
    };
    crate::deliver::outbox::secure_state_dir(dir).map_err(|source| AppError::Outbox {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut open = std::fs::OpenOptions::new();
    open.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = open.open(dir.join("callhook.lock")).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AppError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// True when a process holds the lock on `dir` (a daemon, or a one-shot
/// command sending from the outbox); false when nobody does or the lock
/// file does not exist yet. Never creates anything.
pub fn state_dir_in_use(dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("callhook.lock"))
    else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}
