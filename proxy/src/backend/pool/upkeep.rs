//! The pool's housekeeping and operator controls: idle and lifetime limits, `min_idle`,
//! draining connections the topology no longer allows, reloads, PAUSE/RESUME, close, and the
//! figures the admin console shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{IdleConn, OpenSlot, Pool, Settings, UserCounts};
use crate::backend::conn::BackendConn;
use crate::config::BackendConfig;

impl Pool {
    /// Closes idle connections past `idle_timeout` (above `min_idle`) or their lifetime, and
    /// opens connections to bring used keys up to `min_idle`. Called periodically.
    pub fn maintain(&self) {
        let s = self.inner.settings.load();
        let mut refill = Vec::new();
        let expired = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            // Oldest first within each key: the stacks are used from the end, so the first
            // `len - min_idle` are the surplus.
            let mut expired = Vec::new();
            let keys: Vec<_> = st.idle.keys().cloned().collect();
            for key in keys {
                let Some(conns) = st.idle.get_mut(&key) else {
                    continue;
                };
                let total = conns.len();
                let mut keep = Vec::with_capacity(total);
                for (i, c) in conns.drain(..).enumerate() {
                    let surplus = total - i > s.min_idle;
                    if c.expired(s.max_lifetime)
                        || (surplus && c.last_used.elapsed() > s.idle_timeout)
                    {
                        expired.push(c);
                    } else {
                        keep.push(c);
                    }
                }
                *conns = keep;
            }
            st.idle.retain(|_, v| !v.is_empty());
            st.idle_count -= expired.len();
            for c in &expired {
                st.release_place(&c.key.user.clone());
            }
            if s.min_idle > 0 && st.waiters.is_empty() && !st.paused {
                let keys: Vec<_> = st.warm_keys.keys().cloned().collect();
                for key in keys {
                    let have = st.idle.get(&key).map_or(0, Vec::len);
                    for _ in have..s.min_idle {
                        if st.open >= s.max_connections
                            || st.user_count(&key.user) >= st.user_cap(s.caps())
                        {
                            break;
                        }
                        st.take_place(&key.user);
                        refill.push(key.clone());
                    }
                }
            }
            st.waiters.retain(|w| !w.tx.is_closed());
            expired
        };
        for c in expired {
            tracing::debug!(backend = %c.id, "closing idle backend connection");
            self.close_conn(c);
        }
        for key in refill {
            let pool = self.clone();
            let slot = OpenSlot::new(self.clone(), key.user.clone());
            tokio::spawn(async move {
                let Ok(target) = pool.inner.topology.target(key.route) else {
                    return; // the slot's drop gives the place back
                };
                let connector = pool.inner.topology.connector(target.host);
                let Some(password) = pool
                    .inner
                    .credentials
                    .backend_password(&key.user, &connector.address)
                else {
                    return;
                };
                match connector.open(&key, &password, None).await {
                    Ok(mut conn) => {
                        conn.host = target.host;
                        conn.epoch = target.epoch;
                        slot.disarm();
                        pool.give(conn);
                    }
                    Err(e) => tracing::warn!(error = %e, "opening a min_idle connection failed"),
                }
            });
        }
    }

    /// Closes idle connections the topology no longer allows (a demoted or unreachable
    /// writer, a replica past the lag bound). Lent ones close as they come back. Called by
    /// the monitor after every report.
    pub fn drain_invalid(&self) {
        let topology = &self.inner.topology;
        let to_close = {
            let mut st = self.lock();
            let mut gone = st.take_idle_if(|c| !topology.still_valid(c.key.route, c.host, c.epoch));
            if !gone.is_empty() {
                gone.extend(self.serve_waiters(&mut st));
            }
            gone
        };
        if !to_close.is_empty() {
            tracing::info!(
                connections = to_close.len(),
                "closing idle connections to a host that is no longer the writer or an eligible replica"
            );
        }
        self.close_all(to_close);
    }

    /// Runs [`Pool::maintain`] every second until the pool closes.
    pub fn spawn_maintenance(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let pool = Pool { inner };
                if pool.lock().closed {
                    return;
                }
                pool.maintain();
            }
        });
    }

    /// Whether the pool was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops lending: closes idle connections, fails waiters; lent connections close on return.
    pub fn close(&self) {
        let idle: Vec<BackendConn> = {
            let mut st = self.lock();
            st.closed = true;
            st.waiters.clear();
            st.take_idle_if(|_| true)
        };
        self.close_all(idle);
    }

    /// Connections counted against the cap, idle ones, and waiting borrowers.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.open, st.idle_count, st.waiters.len())
    }

    /// The cap on backend connections now.
    pub fn max_connections(&self) -> usize {
        self.inner.settings.load().max_connections
    }

    /// Applies new limits and timings (a reload). A lower cap holds at once for new borrows;
    /// idle connections above it close now, lent ones when they come back. A higher cap serves
    /// waiting borrowers at once.
    pub fn apply_settings(&self, config: &BackendConfig) {
        self.inner.settings.store(Arc::new(Settings::from(config)));
        for connector in self.inner.topology.connectors() {
            connector.set_limits(
                config.connect_timeout,
                config.max_prepared_statements_per_connection,
            );
        }
        self.inner.topology.configure(config);
        let to_close = {
            let mut st = self.lock();
            let mut to_close = Vec::new();
            while st.open > config.max_connections {
                let Some(c) = st.evict_any_idle() else { break };
                to_close.push(c);
            }
            to_close.extend(self.serve_waiters(&mut st));
            to_close
        };
        self.close_all(to_close);
    }

    /// PAUSE: new borrows wait (up to their `borrow_timeout`) until [`Pool::resume`]; idle
    /// connections close now and lent ones when they come back, so the database can go away
    /// for maintenance. Returns how many connections are still lent. Transactions in flight
    /// keep their connections and finish.
    pub fn pause(&self) -> usize {
        let idle = {
            let mut st = self.lock();
            st.paused = true;
            st.take_idle_if(|_| true)
        };
        self.close_all(idle);
        self.lock().open
    }

    /// RESUME: serves the borrowers that queued during PAUSE, in order. Returns whether the
    /// pool was paused.
    pub fn resume(&self) -> bool {
        let (was_paused, to_close) = {
            let mut st = self.lock();
            let was = std::mem::replace(&mut st.paused, false);
            (was, self.serve_waiters(&mut st))
        };
        self.close_all(to_close);
        was_paused
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Idle connections, for `SHOW SERVERS`.
    pub fn idle_connections(&self) -> Vec<IdleConn> {
        let st = self.lock();
        let mut out: Vec<IdleConn> = st
            .idle
            .values()
            .flatten()
            .map(|c| IdleConn {
                thread_id: c.thread_id,
                user: c.key.user.clone(),
                schema: c.schema.clone(),
                age: c.created.elapsed(),
                idle: c.last_used.elapsed(),
            })
            .collect();
        out.sort_by_key(|c| c.thread_id);
        out
    }

    /// Per user: idle connections, waiting borrowers and the longest wait, for `SHOW POOLS`.
    pub fn user_counts(&self) -> HashMap<Arc<str>, UserCounts> {
        let st = self.lock();
        let mut out: HashMap<Arc<str>, UserCounts> = HashMap::new();
        for (key, conns) in &st.idle {
            out.entry(key.user.clone()).or_default().idle += conns.len();
        }
        let now = Instant::now();
        for w in st.waiters.iter().filter(|w| !w.tx.is_closed()) {
            let c = out.entry(w.key.user.clone()).or_default();
            c.waiting += 1;
            c.longest_wait = c.longest_wait.max(now.saturating_duration_since(w.since));
        }
        out
    }
}
