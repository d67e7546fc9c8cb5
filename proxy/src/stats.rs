//! Counters and gauges of one proxy instance. Plain atomics: cheap on the per-command path, and
//! readable by tests, the demo and (later) the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::{PinReason, ResetReason};

/// Live counters. Gauges go up and down; totals only up.
#[derive(Debug, Default)]
pub struct Stats {
    pub client_connections: AtomicU64,
    pub client_connections_total: AtomicU64,
    pub client_auth_failures: AtomicU64,
    pub client_handshake_failures: AtomicU64,
    pub client_tls_logins: AtomicU64,
    pub client_full_auths: AtomicU64,
    pub backend_connections: AtomicU64,
    pub backend_connections_peak: AtomicU64,
    pub backend_connections_opened: AtomicU64,
    pub backend_connect_failures: AtomicU64,
    pub backend_resets: AtomicU64,
    /// Resets started and not yet finished.
    pub resets_in_flight: AtomicU64,
    pub borrows: AtomicU64,
    pub borrow_timeouts: AtomicU64,
    pub borrow_wait_micros: AtomicU64,
    pub commands: AtomicU64,
    pub pins_total: [AtomicU64; PinReason::ALL.len()],
    pub pinned_sessions: [AtomicU64; PinReason::ALL.len()],
    /// Connections a session gave back for a reset, by each reason that asked for it.
    pub resets_by_reason: [AtomicU64; ResetReason::ALL.len()],
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub client_connections: u64,
    pub client_connections_total: u64,
    pub client_auth_failures: u64,
    pub client_handshake_failures: u64,
    /// Logins completed over TLS.
    pub client_tls_logins: u64,
    /// caching_sha2 logins that sent the password in full.
    pub client_full_auths: u64,
    pub backend_connections: u64,
    pub backend_connections_peak: u64,
    pub backend_connections_opened: u64,
    pub backend_connect_failures: u64,
    pub backend_resets: u64,
    pub borrows: u64,
    pub borrow_timeouts: u64,
    pub borrow_wait_micros: u64,
    pub commands: u64,
    /// Sessions ever pinned, by reason.
    pub pins_total: Vec<(PinReason, u64)>,
    /// Sessions pinned right now, by reason.
    pub pinned_sessions: Vec<(PinReason, u64)>,
    /// Connections given back for a reset, by each reason that asked for it.
    pub resets_by_reason: Vec<(ResetReason, u64)>,
}

impl Snapshot {
    /// Sessions ever pinned for `reason`.
    pub fn pins(&self, reason: PinReason) -> u64 {
        self.pins_total
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Sessions ever pinned, all reasons.
    pub fn pins_all(&self) -> u64 {
        self.pins_total.iter().map(|(_, n)| n).sum()
    }

    /// Connections given back for a reset that `reason` asked for.
    pub fn resets(&self, reason: ResetReason) -> u64 {
        self.resets_by_reason
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Sessions pinned now for `reason`.
    pub fn pinned_now(&self, reason: PinReason) -> u64 {
        self.pinned_sessions
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let by_reason = |arr: &[AtomicU64; PinReason::ALL.len()]| {
            PinReason::ALL
                .iter()
                .map(|r| (*r, g(&arr[r.index()])))
                .collect()
        };
        Snapshot {
            client_connections: g(&self.client_connections),
            client_connections_total: g(&self.client_connections_total),
            client_auth_failures: g(&self.client_auth_failures),
            client_handshake_failures: g(&self.client_handshake_failures),
            client_tls_logins: g(&self.client_tls_logins),
            client_full_auths: g(&self.client_full_auths),
            backend_connections: g(&self.backend_connections),
            backend_connections_peak: g(&self.backend_connections_peak),
            backend_connections_opened: g(&self.backend_connections_opened),
            backend_connect_failures: g(&self.backend_connect_failures),
            backend_resets: g(&self.backend_resets),
            borrows: g(&self.borrows),
            borrow_timeouts: g(&self.borrow_timeouts),
            borrow_wait_micros: g(&self.borrow_wait_micros),
            commands: g(&self.commands),
            pins_total: by_reason(&self.pins_total),
            pinned_sessions: by_reason(&self.pinned_sessions),
            resets_by_reason: ResetReason::ALL
                .iter()
                .map(|r| (*r, g(&self.resets_by_reason[r.index()])))
                .collect(),
        }
    }

    /// Counts a new backend connection and keeps the peak.
    pub fn backend_opened(&self) {
        let now = self.backend_connections.fetch_add(1, Relaxed) + 1;
        self.backend_connections_opened.fetch_add(1, Relaxed);
        self.backend_connections_peak.fetch_max(now, Relaxed);
    }

    /// Takes a connection just counted by [`Stats::backend_opened`] out of the counts again:
    /// the monitor's own connections are not the pool's.
    pub fn backend_not_pooled(&self) {
        self.backend_connections.fetch_sub(1, Relaxed);
        self.backend_connections_opened.fetch_sub(1, Relaxed);
    }

    /// Counts a closed backend connection.
    pub fn backend_closed(&self) {
        self.backend_connections.fetch_sub(1, Relaxed);
    }

    /// Counts a session newly pinned for `reason`.
    pub fn pinned(&self, reason: PinReason) {
        self.pins_total[reason.index()].fetch_add(1, Relaxed);
        self.pinned_sessions[reason.index()].fetch_add(1, Relaxed);
    }

    /// Counts a connection given back for a reset that `reason` asked for.
    pub fn reset_requested(&self, reason: ResetReason) {
        self.resets_by_reason[reason.index()].fetch_add(1, Relaxed);
    }

    /// Counts a session no longer pinned for `reason`.
    pub fn unpinned(&self, reason: PinReason) {
        self.pinned_sessions[reason.index()].fetch_sub(1, Relaxed);
    }
}
