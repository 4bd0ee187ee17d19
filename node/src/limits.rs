//! Process limits: every socket is a file, so the open-file limit caps connections.

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_open_files() -> u64 {
    #[cfg(unix)]
    {
        match rlimit::Resource::NOFILE.get() {
            Ok((soft, hard)) => {
                if soft < hard {
                    if let Err(e) = rlimit::Resource::NOFILE.set(hard, hard) {
                        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                        return soft;
                    }
                }
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                0
            }
        }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// Below this, a node cannot hold a useful number of connections.
pub const LOW_OPEN_FILES: u64 = 4096;
