//! The statement lexer and classifier (holds, KILL, counters, diagnostics), the digest and the
//! counter substitution, on any bytes a client may send as a query, under every lexing mode:
//! the first input byte picks the dialect, quoting rules and character set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sql::{Charset, LexMode};

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, sql)) = input.split_first() else {
        return;
    };
    let mut mode = if knobs & 1 == 0 {
        LexMode::mariadb(101106)
    } else {
        LexMode::mysql(90700)
    };
    mode.backslash_escapes = knobs & 2 == 0;
    mode.ansi_quotes = knobs & 4 != 0;
    mode.charset = match (knobs >> 3) % 5 {
        0 => Charset::Simple,
        1 => Charset::Big5,
        2 => Charset::Sjis,
        3 => Charset::Gbk,
        _ => Charset::Gb18030,
    };
    let class = sluice::sql::classify(sql, mode, knobs & 0x80 == 0);
    let calls: Vec<_> = class
        .statements
        .iter()
        .flat_map(|s| s.counters.iter().copied())
        .collect();
    let substituted = sluice::sql::counters::substitute(sql, &calls, -1, 0);
    // Substitution only ever replaces calls; with none, the text is untouched.
    assert!(!calls.is_empty() || substituted == sql);
    let digest = sluice::sql::digest(sql);
    assert!(digest.text.len() <= sluice::sql::DIGEST_TEXT_MAX + 4);
    let _ = sluice::sql::possibly_diagnostic(sql);
    let _ = sluice::logsafe::EscapedBytes(sql).to_string();
});
