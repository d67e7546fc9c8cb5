//! Server responses as Sluice follows them: OK (with session-state data), ERR, EOF, column
//! counts and definitions, rows, prepare-OK, LOCAL INFILE requests, for every kind of command.
//! Input: a selector byte, then packets as (length byte, payload).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::protocol::ok;
use sluice::protocol::packets;
use sluice::protocol::response::{Expect, ResponseTracker, Summary};

const EXPECTS: [Expect; 6] = [
    Expect::ResultSets,
    Expect::Prepare,
    Expect::FieldList,
    Expect::Fetch,
    Expect::Single,
    Expect::SingleRaw,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let expect = EXPECTS[usize::from(selector) % EXPECTS.len()];
    let deprecate_eof = selector & 0x10 != 0;
    let untrack = selector & 0x20 != 0;
    let mut tracker = ResponseTracker::new(expect, deprecate_eof, true, untrack);
    let mut summary = Summary::default();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let _ = ok::Ok::parse(payload, true);
        let _ = packets::Err::parse(payload);
        let _ = ok::eof_status(payload);
        if let Some(o) = ok::Ok::parse(payload, true) {
            let mut out = Vec::new();
            o.encode_untracked(&mut out);
        }
        let _ = ok::state_changes(payload);
        if tracker.is_done() {
            break;
        }
        if tracker
            .on_packet(payload, payload.len(), &mut summary)
            .is_err()
        {
            break;
        }
    }
});
