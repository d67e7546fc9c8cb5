//! Server-side prepared statements cached on one backend connection. Client sessions see
//! Sluice's own statement ids; each backend connection prepares a statement once and keeps it
//! for every session that borrows the connection, up to a bound, least recently used first out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What identifies a statement on a server: its text, the schema it was prepared in (a
/// statement resolves unqualified table names in the schema current at prepare time), and the
/// settings that change how the server parses it and describes its columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatementKey {
    pub schema: Option<Arc<str>>,
    /// `(variable, value)` pairs of [`PARSE_VARS`] at prepare time.
    pub settings: Arc<[(usize, String)]>,
    pub sql: Arc<[u8]>,
    /// Set for a statement only its client statement may use (see [`StatementOwner`]).
    pub owner: Option<StatementOwner>,
}

/// The client statement a server statement belongs to. MySQL (8.0.22 and later) resolves a
/// parameter's type at a statement's first execution and keeps it for later ones (`SELECT ?`
/// executed with 1 then with 'abc' answers 0), so a statement with parameters carries its
/// executions' history and is never shared between client statements there. MariaDB takes
/// each execution's types afresh, and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementOwner {
    /// Sluice's id of the client session.
    pub client: u32,
    /// The statement id Sluice gave that client.
    pub statement: u32,
}

/// The replayable variables that change how a statement is parsed or described (indexes into
/// `session::TRACKED_VARS` are resolved by name at use).
pub const PARSE_VARS: [&str; 4] = [
    "sql_mode",
    "character_set_client",
    "collation_connection",
    "character_set_results",
];

/// Statement texts shared by every session and backend connection that prepared them, so a
/// text a thousand sessions prepare is stored once.
#[derive(Debug, Default)]
pub struct TextInterner {
    texts: Mutex<HashSet<Arc<[u8]>>>,
    /// Size of the set after the last purge; the next purge waits until it doubles.
    purged_at: AtomicUsize,
}

/// Texts longer than this are not shared (they are rare and would pin memory in the set).
const INTERN_MAX: usize = 64 * 1024;

impl TextInterner {
    /// The shared copy of `text`.
    pub fn intern(&self, text: &[u8]) -> Arc<[u8]> {
        if text.len() > INTERN_MAX {
            return Arc::from(text);
        }
        let mut set = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = set.get(text) {
            return t.clone();
        }
        // Forget texts nobody holds any more, now and then.
        if set.len() >= 1024 && set.len() >= 2 * self.purged_at.load(Ordering::Relaxed) {
            set.retain(|t| Arc::strong_count(t) > 1);
            self.purged_at.store(set.len(), Ordering::Relaxed);
        }
        let t: Arc<[u8]> = Arc::from(text);
        set.insert(t.clone());
        t
    }

    /// Texts in the set now.
    pub fn len(&self) -> usize {
        self.texts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no text is shared.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A prepare response as the server sent it: what a client that prepares the same statement
/// again is answered with, without asking the server.
#[derive(Debug)]
pub struct PrepareMeta {
    /// Every packet of the response, framed, sequence ids from 1. The statement id in the
    /// first packet is the server's and is replaced with the client's before sending.
    pub response: Vec<u8>,
    pub params: u16,
    pub columns: u16,
}

/// Offset of the statement id in [`PrepareMeta::response`]: frame header, then the OK byte.
pub const RESPONSE_ID_AT: usize = 5;

/// One statement prepared on the server.
#[derive(Debug)]
pub struct CachedStatement {
    /// The server's statement id.
    pub server_id: u32,
    pub meta: Arc<PrepareMeta>,
    /// Parameter types the server holds for it from the last execute that sent types.
    pub bound_types: Option<Arc<[u8]>>,
    /// A session keeps a cursor or long data on it: not evicted meanwhile.
    pub held: bool,
    last_used: u64,
}

/// The statements prepared on one backend connection.
#[derive(Debug)]
pub struct StatementCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<StatementKey, CachedStatement>,
}

impl StatementCache {
    /// An empty cache holding at most `capacity` statements.
    pub fn new(capacity: usize) -> Self {
        StatementCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// The statement for `key`, marked as just used.
    pub fn get_mut(&mut self, key: &StatementKey) -> Option<&mut CachedStatement> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = tick;
        Some(entry)
    }

    /// Adds a statement the server just prepared; returns the server ids of statements evicted
    /// to make room, which the caller closes on the server.
    pub fn insert(
        &mut self,
        key: StatementKey,
        server_id: u32,
        meta: Arc<PrepareMeta>,
    ) -> Vec<u32> {
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| !e.held)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim.and_then(|k| self.entries.remove(&k)) {
                Some(e) => evicted.push(e.server_id),
                // Everything is held: go over the bound rather than break a cursor.
                None => break,
            }
        }
        self.tick += 1;
        if let Some(old) = self.entries.insert(
            key,
            CachedStatement {
                server_id,
                meta,
                bound_types: None,
                held: false,
                last_used: self.tick,
            },
        ) {
            evicted.push(old.server_id);
        }
        evicted
    }

    /// Gives the statement cached under `from` to `to`, if no execution has typed its
    /// parameters yet and nothing holds it. True if it moved.
    pub fn take_over(&mut self, from: &StatementKey, to: StatementKey) -> bool {
        let pristine = self
            .entries
            .get(from)
            .is_some_and(|e| e.bound_types.is_none() && !e.held);
        if !pristine || self.entries.contains_key(&to) {
            return false;
        }
        match self.entries.remove(from) {
            Some(e) => {
                self.entries.insert(to, e);
                true
            }
            None => false,
        }
    }

    /// Forgets a statement (the caller closes it on the server).
    pub fn remove(&mut self, key: &StatementKey) -> Option<CachedStatement> {
        self.entries.remove(key)
    }

    /// Forgets everything: the server dropped its statements (reset, change user).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Statements cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no statement is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> StatementKey {
        StatementKey {
            owner: None,
            schema: None,
            settings: Arc::from(Vec::new()),
            sql: Arc::from(sql.as_bytes()),
        }
    }

    fn meta() -> Arc<PrepareMeta> {
        Arc::new(PrepareMeta {
            response: Vec::new(),
            params: 0,
            columns: 0,
        })
    }

    #[test]
    fn evicts_least_recently_used_but_never_held() {
        let mut c = StatementCache::new(2);
        assert!(c.insert(key("a"), 1, meta()).is_empty());
        assert!(c.insert(key("b"), 2, meta()).is_empty());
        c.get_mut(&key("a")).unwrap().held = true;
        // "a" is older but held: "b" goes.
        assert_eq!(c.insert(key("c"), 3, meta()), vec![2]);
        c.get_mut(&key("a")).unwrap().held = false;
        c.get_mut(&key("c"));
        assert_eq!(c.insert(key("d"), 4, meta()), vec![1]);
        assert_eq!(c.len(), 2);
        assert!(c.get_mut(&key("c")).is_some() && c.get_mut(&key("d")).is_some());
    }

    #[test]
    fn texts_are_stored_once_and_forgotten_when_unused() {
        let interner = TextInterner::default();
        let a = interner.intern(b"SELECT 1");
        let b = interner.intern(b"SELECT 1");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        let kept: Vec<Arc<[u8]>> = (0..2048)
            .map(|i| interner.intern(format!("SELECT {i}").as_bytes()))
            .collect();
        assert!(interner.len() <= kept.len() + 1, "an unused text was kept");
        let long = vec![b'x'; INTERN_MAX + 1];
        assert!(!Arc::ptr_eq(
            &interner.intern(&long),
            &interner.intern(&long)
        ));
    }

    #[test]
    fn only_a_pristine_statement_changes_owner() {
        let mut c = StatementCache::new(4);
        let owned = |n| StatementKey {
            owner: Some(StatementOwner {
                client: 1,
                statement: n,
            }),
            ..key("a")
        };
        c.insert(key("a"), 1, meta());
        assert!(c.take_over(&key("a"), owned(1)));
        assert!(c.get_mut(&key("a")).is_none());
        assert_eq!(c.get_mut(&owned(1)).map(|e| e.server_id), Some(1));
        c.insert(key("a"), 2, meta());
        c.get_mut(&key("a")).unwrap().bound_types = Some(Arc::from(&[8u8, 0][..]));
        assert!(!c.take_over(&key("a"), owned(2)), "typed by an execution");
        c.insert(key("b"), 3, meta());
        c.get_mut(&key("b")).unwrap().held = true;
        assert!(!c.take_over(&key("b"), owned(3)), "held");
    }

    #[test]
    fn all_held_goes_over_the_bound() {
        let mut c = StatementCache::new(1);
        c.insert(key("a"), 1, meta());
        c.get_mut(&key("a")).unwrap().held = true;
        assert!(c.insert(key("b"), 2, meta()).is_empty());
        assert_eq!(c.len(), 2);
    }
}
