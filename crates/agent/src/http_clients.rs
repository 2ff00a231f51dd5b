//! The HTTP clients and compiled regexes shared by all http runs of one [`Runner`](crate::Runner).
//!
//! Building a client loads TLS roots and sets up a connection pool, which costs far more than a request
//! to a local endpoint; the agent may run thousands of http jobs a second, so clients are built once and
//! reused. The common case uses one client; `tlsNoVerifyPeer` gets a second one, built on first use; the
//! rare jobs with certificate files get one per distinct set of files, in a small bounded cache. Regexes
//! for `expectBody` are cached by pattern for the same reason.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock, PoisonError};

use regex::Regex;
use reqwest::{Certificate, Client, ClientBuilder, Identity};

use crate::config::TlsOptions;

/// Distinct certificate-file settings kept at once; past that the cache starts over.
const CLIENTS_WITH_FILES_MAX: usize = 32;

/// Distinct `expectBody` patterns kept at once; past that the cache starts over.
const REGEXES_MAX: usize = 256;

pub(crate) struct HttpClients {
    /// An error here (no usable TLS roots, say) fails http runs with a message instead of the agent.
    default: Result<Client, String>,
    no_verify: OnceLock<Result<Client, String>>,
    with_files: BoundedCache<TlsOptions, Client>,
}

impl HttpClients {
    pub fn new() -> HttpClients {
        HttpClients {
            default: build(builder()),
            no_verify: OnceLock::new(),
            with_files: BoundedCache::new(CLIENTS_WITH_FILES_MAX),
        }
    }

    /// The client for a run with these TLS options (clients are cheap handles to a shared pool).
    pub fn client(&self, tls: &TlsOptions) -> Result<Client, String> {
        if tls.has_files() {
            self.with_files.get_or_try_insert(tls, build_with_files)
        } else if tls.no_verify_peer {
            self.no_verify.get_or_init(|| build(builder().tls_danger_accept_invalid_certs(true))).clone()
        } else {
            self.default.clone()
        }
    }
}

fn builder() -> ClientBuilder {
    Client::builder().user_agent(concat!("kairos/", env!("CARGO_PKG_VERSION")))
}

fn build(builder: ClientBuilder) -> Result<Client, String> {
    builder.build().map_err(|e| format!("cannot build the HTTP client: {}", crate::http::error_chain(&e)))
}

/// A client trusting only the roots in `tlsRootCAsFile` (as Dkron does) and presenting the
/// `tlsCertificateFile` identity. The files are read when the client is built, i.e. once per cache life.
fn build_with_files(tls: &TlsOptions) -> Result<Client, String> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {key} '{}': {e}", path.display()))
    };
    let mut builder = builder().tls_danger_accept_invalid_certs(tls.no_verify_peer);
    if let Some(path) = &tls.root_cas_file {
        let roots = Certificate::from_pem_bundle(&read("tlsRootCAsFile", path)?)
            .ok()
            .filter(|roots| !roots.is_empty())
            .ok_or_else(|| format!("no certificates in tlsRootCAsFile '{}'", path.display()))?;
        builder = builder.tls_certs_only(roots);
    }
    if let (Some(cert), Some(key)) = (&tls.certificate_file, &tls.certificate_key_file) {
        let mut pem = read("tlsCertificateKeyFile", key)?;
        pem.push(b'\n');
        pem.extend(read("tlsCertificateFile", cert)?);
        let identity = Identity::from_pem(&pem).map_err(|e| {
            format!("cannot use client certificate '{}' with key '{}': {e}", cert.display(), key.display())
        })?;
        builder = builder.identity(identity);
    }
    build(builder)
}

/// `expectBody` patterns compiled once.
pub(crate) struct RegexCache {
    regexes: BoundedCache<String, Regex>,
}

impl RegexCache {
    pub fn new() -> RegexCache {
        RegexCache { regexes: BoundedCache::new(REGEXES_MAX) }
    }

    pub fn get(&self, pattern: &str) -> Result<Regex, regex::Error> {
        self.regexes.get_or_try_insert(&pattern.to_owned(), |p| Regex::new(p))
    }
}

/// A map with a size bound that simply starts over when full: the working set (a few distinct
/// patterns or TLS settings) is tiny, so anything smarter than that would be wasted.
struct BoundedCache<K, V> {
    max_len: usize,
    map: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    fn new(max_len: usize) -> Self {
        BoundedCache { max_len, map: Mutex::new(HashMap::new()) }
    }

    fn get_or_try_insert<E>(&self, key: &K, make: impl FnOnce(&K) -> Result<V, E>) -> Result<V, E> {
        if let Some(value) = self.lock().get(key) {
            return Ok(value.clone());
        }
        // Built outside the lock: a slow build must not stall runs that hit the cache.
        let value = make(key)?;
        let mut map = self.lock();
        if map.len() >= self.max_len {
            map.clear();
        }
        map.insert(key.clone(), value.clone());
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        // The map holds no invariant a panicking holder could break.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_cache_returns_equal_regexes_and_stays_bounded() {
        let cache = RegexCache::new();
        assert!(cache.get("^ok$").unwrap().is_match("ok"));
        assert!(cache.get("^ok$").unwrap().is_match("ok"));
        for i in 0..(REGEXES_MAX * 2) {
            cache.get(&format!("x{i}")).unwrap();
        }
        assert!(cache.regexes.lock().len() <= REGEXES_MAX);
        assert!(cache.get("(").is_err());
    }
}
