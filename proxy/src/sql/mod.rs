//! A look at statement text before and after it runs. The lexer reads text the way the server
//! does (comments, executable comments and their versions, quoting under each `sql_mode`,
//! multibyte character sets); the classifier says, per statement, what it does to session
//! state that the server's tracking does not report, and what Sluice must do before it runs
//! (`KILL`, the session's counters, diagnostics). Not a parser: what it cannot read for
//! certain, it says so, and the connection is reset before anyone else uses it.

pub mod builtins;
pub mod classify;
pub mod counters;
pub mod digest;
pub mod kill;
pub mod lexer;

pub use classify::{
    Classification, Completion, Diagnostics, Effect, FoundRows, Scope, Statement, ValueColumn,
    classify, possibly_diagnostic,
};
pub use counters::{Counter, CounterCall};
pub use digest::{DIGEST_TEXT_MAX, Digest, digest};
pub use kill::Kill;
pub use lexer::{Charset, Dialect, LexMode};
