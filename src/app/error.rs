//! What can stop the daemon from starting, or stop it abnormally.

use std::path::PathBuf;

use crate::cluster::ClusterError;
use crate::deliver;

/// The daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Installing a signal handler failed.
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The outbox could not be opened.
    #[error("cannot open the outbox in {dir}: {source}")]
    Outbox {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: deliver::outbox::OutboxError,
    },
    /// Another daemon already runs on this state directory.
    #[error("another callhook daemon is using {dir} (lock file {dir}/callhook.lock); two daemons on one outbox would send every webhook twice")]
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// The lock file could not be created.
    #[error("cannot create the lock file in {dir}: {source}")]
    LockFile {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Cluster mode could not start.
    #[error("cluster mode: {0}")]
    Cluster(#[source] ClusterError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
