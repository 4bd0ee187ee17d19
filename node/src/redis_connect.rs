//! How the node connects to Redis: the one place that turns a `--redis-url`
//! into a client configuration, used for every Redis client the node builds
//! (the relay's publishers and subscribers, the history and presence store).
//!
//! `redis://` connects in clear text. `rediss://` connects with TLS (rustls):
//! the server certificate must chain to the CA given with `--redis-tls-ca`,
//! or, without it, to one of the system's CA certificates, and must name the
//! URL's host. A `rediss://` URL the node cannot honour (no CA to trust, an
//! unreadable CA file) stops start-up with an error: the node never falls back
//! to clear text.

use std::path::Path;
use std::sync::Arc;

use fred::interfaces::EventInterface;
use fred::prelude::Config;
use fred::types::config::{TlsConfig, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// True for a URL that asks for TLS.
pub fn uses_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The client configuration for one Redis URL (a Redis Cluster seed when
/// `cluster`). Clients follow their reconnect policy from the first attempt,
/// so a node started while Redis is down joins as soon as Redis is up.
pub fn client_config(url: &str, cluster: bool, tls_ca: Option<&Path>) -> Result<Config, String> {
    let mut config = if cluster {
        Config::from_url_clustered(url)
    } else {
        Config::from_url(url)
    }
    .map_err(|e| format!("bad redis url {}: {e}", redacted(url)))?;
    config.fail_fast = false;
    config.tls = if uses_tls(url) {
        Some(tls_config(tls_ca)?)
    } else {
        None
    };
    Ok(config)
}

/// The TLS settings of `rediss://` connections; an error says why TLS cannot
/// be used (checked at start-up, before anything connects).
pub fn tls_config(tls_ca: Option<&Path>) -> Result<TlsConfig, String> {
    let mut roots = RootCertStore::empty();
    match tls_ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--redis-tls-ca {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    format!(
                        "--redis-tls-ca {}: not a PEM certificate: {e}",
                        path.display()
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "--redis-tls-ca {}: unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--redis-tls-ca {}: no PEM certificate in the file",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(
                    "a rediss:// URL needs a CA to verify Redis: this system has no CA \
                            certificates; pass --redis-tls-ca FILE (PEM)"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for Redis: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config).into())
}

/// Log, in pubmesh's words, when a Redis client loses its server and when it
/// has it back: one warning per outage (further failed attempts at debug
/// level), one line when it recovers. `role` says which client it is;
/// `counted`, if given, counts each connection after the first.
pub fn log_outages(
    client: &impl EventInterface,
    url: &str,
    role: &'static str,
    counted: Option<prometheus::IntCounter>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut errors = client.error_rx();
    let mut reconnects = client.reconnect_rx();
    let url = redacted(url);
    runtime.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let mut down_since: Option<std::time::Instant> = None;
        let mut connected = false;
        loop {
            tokio::select! {
                event = errors.recv() => match event {
                    Ok((error, _)) if down_since.is_none() => {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(
                            redis = %url,
                            role,
                            error = %error.details(),
                            "Redis unreachable; retrying (cross-node delivery, history and presence wait for it)"
                        );
                    }
                    Ok((error, _)) => tracing::debug!(redis = %url, role, error = %error.details(), "Redis still unreachable"),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                event = reconnects.recv() => match event {
                    Ok(_) => {
                        if let (true, Some(counter)) = (connected, &counted) {
                            counter.inc();
                        }
                        match down_since.take() {
                            Some(since) => tracing::info!(
                                redis = %url,
                                role,
                                down_seconds = format!("{:.1}", since.elapsed().as_secs_f64()),
                                "Redis reachable again"
                            ),
                            None if !connected => tracing::info!(redis = %url, role, "connected to Redis"),
                            None => tracing::info!(redis = %url, role, "reconnected to Redis"),
                        }
                        connected = true;
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    });
}

/// A URL with its password replaced, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_have_no_tls_and_rediss_urls_do() {
        let plain = client_config("redis://127.0.0.1:7000", false, None).expect("valid");
        assert!(plain.tls.is_none());
        assert!(!plain.fail_fast);
        let dir = std::env::temp_dir().join(format!("pubmesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let err = client_config("rediss://127.0.0.1:7000", false, Some(&empty)).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = dir.join("missing.pem");
        let err = client_config("rediss://127.0.0.1:7000", false, Some(&missing)).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redacted("rediss://user:secret@redis.example:6380/0"),
            "rediss://user:***@redis.example:6380/0"
        );
        assert_eq!(
            redacted("redis://secret@10.0.0.5:6379"),
            "redis://***@10.0.0.5:6379"
        );
        assert_eq!(redacted("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
    }
}
