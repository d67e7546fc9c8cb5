//! What `/readyz` checks: credentials are loaded, Sluice is not draining, and a writable
//! database answered within a short deadline. The database's answer is cached briefly, so a
//! load balancer polling every few seconds does not open a connection each time.

use std::time::{Duration, Instant};

use crate::context::Shared;

/// How long a database check's answer is reused.
const ANSWER_FOR: Duration = Duration::from_secs(2);

/// How long the database may take to answer the check, connection included.
const CHECK_DEADLINE: Duration = Duration::from_secs(3);

/// The cached readiness answer.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Concurrent checks wait here for the one that is asking the database.
    cache: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Ready, or why not.
    pub async fn check(&self, shared: &Shared) -> Result<(), String> {
        if shared.is_draining() {
            return Err("draining: Sluice is shutting down".into());
        }
        if shared.credentials.is_empty() {
            return Err("no database credentials loaded yet".into());
        }
        let mut cache = self.cache.lock().await;
        if let Some((at, answer)) = cache.as_ref()
            && at.elapsed() < ANSWER_FOR
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(CHECK_DEADLINE, check_database(shared)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "the database did not answer within {}",
                humantime::format_duration(CHECK_DEADLINE)
            )),
        };
        if let Err(why) = &answer {
            tracing::warn!(reason = %why, "not ready");
        }
        *cache = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// Logs in as a known user on a connection of its own (outside the pool, so a busy pool does
/// not make Sluice look unready) and checks that the server accepts writes.
async fn check_database(shared: &Shared) -> Result<(), String> {
    let connector = shared.pool.connector();
    let Some(cred) = shared.credentials.any() else {
        // Nobody to log in as yet: that the server greets is all that can be checked.
        return connector
            .probe()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    };
    let deadline = tokio::time::Instant::now() + CHECK_DEADLINE;
    let mut conn = super::side_connection(shared, cred.username.clone(), deadline).await?;
    let row = conn
        .query_row("SELECT @@global.read_only", "readiness check")
        .await;
    super::close_side_connection(shared, conn);
    let value = row
        .map_err(|e| e.to_string())?
        .and_then(|r| r.into_iter().next().flatten());
    match value.as_deref() {
        Some("0") | Some("OFF") => Ok(()),
        Some(v) => Err(format!(
            "the database is read-only (@@global.read_only = {v})"
        )),
        None => Err("the database did not say whether it is read-only".into()),
    }
}
