//! The statement lexer: classification (pins, KILL, counters) and the digest, on any bytes a
//! client may send as a query, and the counter substitution that rewrites them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|sql: &[u8]| {
    let class = sluice::sql::classify(sql);
    let digest = sluice::sql::digest(sql);
    assert!(digest.text.len() <= sluice::sql::DIGEST_TEXT_MAX + 4);
    let _ = sluice::sql::substitute_counters(sql, &class.counters, -1, 0);
    let _ = sluice::logsafe::EscapedBytes(sql).to_string();
});
