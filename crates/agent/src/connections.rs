//! Connections to brokers and databases kept across runs, keyed by their connection settings.
//!
//! Connecting (TCP, a protocol handshake, authentication) costs far more than a publish, and a job firing every
//! second would otherwise open and close a connection every second. Connections whose protocol lets runs share
//! them (a NATS client, a multiplexed redis connection, an AMQP connection on which each run opens its own
//! channel) live in a [`Shared`] cache; a PostgreSQL connection runs one statement at a time and a cancel request
//! cancels whatever it runs, so those are lent to one run at a time from an [`Idle`] pool.
//!
//! Both are bounded: past [`KEYS_MAX`] distinct settings the cache starts over, as the http clients' cache does.
//! The working set is a handful of brokers; anything smarter would be wasted. A connection found broken is
//! dropped and the run connects afresh, so a restarted broker costs one reconnect, not a failed run.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Distinct connection settings kept at once, per executor.
pub(crate) const KEYS_MAX: usize = 32;

/// Idle PostgreSQL connections kept per connection string: enough for a few jobs running at once.
pub(crate) const IDLE_PER_KEY_MAX: usize = 4;

/// One connection per settings, handed out as clones (the connection types are cheap handles).
pub(crate) struct Shared<C> {
    map: Mutex<HashMap<String, C>>,
}

impl<C: Clone> Shared<C> {
    pub fn new() -> Self {
        Shared { map: Mutex::new(HashMap::new()) }
    }

    /// The cached connection for `key` if `usable` says it still is; an unusable one is dropped.
    pub fn get(&self, key: &str, usable: impl FnOnce(&C) -> bool) -> Option<C> {
        let mut map = lock(&self.map);
        let connection = map.get(key)?;
        if usable(connection) {
            return Some(connection.clone());
        }
        map.remove(key);
        None
    }

    /// Keeps `connection` for later runs with the same settings (a concurrent run that connected too
    /// replaces it; both work).
    pub fn put(&self, key: &str, connection: C) {
        let mut map = lock(&self.map);
        if map.len() >= KEYS_MAX && !map.contains_key(key) {
            map.clear();
        }
        map.insert(key.to_owned(), connection);
    }

    /// Forgets the connection for `key`, after an error that suggests it is broken.
    pub fn remove(&self, key: &str) {
        lock(&self.map).remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Idle connections lent to one run at a time.
pub(crate) struct Idle<C> {
    map: Mutex<HashMap<String, Vec<C>>>,
}

impl<C> Idle<C> {
    pub fn new() -> Self {
        Idle { map: Mutex::new(HashMap::new()) }
    }

    /// An idle connection for `key` that `usable` accepts; unusable ones met on the way are dropped.
    pub fn take(&self, key: &str, usable: impl Fn(&C) -> bool) -> Option<C> {
        let mut map = lock(&self.map);
        let idle = map.get_mut(key)?;
        while let Some(connection) = idle.pop() {
            if usable(&connection) {
                return Some(connection);
            }
        }
        None
    }

    /// Returns a connection after a run that left it in a known state; past the bounds it is dropped.
    pub fn give_back(&self, key: &str, connection: C) {
        let mut map = lock(&self.map);
        if map.len() >= KEYS_MAX && !map.contains_key(key) {
            map.clear();
        }
        let idle = map.entry(key.to_owned()).or_default();
        if idle.len() < IDLE_PER_KEY_MAX {
            idle.push(connection);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold no invariant a panicking holder could break.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_connections_are_reused_until_found_broken_and_stay_bounded() {
        let shared = Shared::new();
        shared.put("a", 1);
        assert_eq!(shared.get("a", |_| true), Some(1));
        assert_eq!(shared.get("a", |_| false), None, "a broken connection is dropped");
        assert_eq!(shared.get("a", |_| true), None);
        for i in 0..(KEYS_MAX * 2) {
            shared.put(&format!("k{i}"), i);
        }
        assert!(shared.len() <= KEYS_MAX);
        shared.remove("k63");
        assert_eq!(shared.get("k63", |_| true), None);
    }

    #[test]
    fn idle_connections_are_lent_once_and_bounded_per_key() {
        let idle = Idle::new();
        for i in 0..(IDLE_PER_KEY_MAX + 2) {
            idle.give_back("db", i);
        }
        let mut lent = Vec::new();
        while let Some(connection) = idle.take("db", |_| true) {
            lent.push(connection);
        }
        assert_eq!(lent.len(), IDLE_PER_KEY_MAX);
        idle.give_back("db", 7);
        idle.give_back("db", 8);
        assert_eq!(idle.take("db", |c| *c != 8), Some(7), "the broken one is skipped and dropped");
        assert_eq!(idle.take("db", |_| true), None);
    }
}
