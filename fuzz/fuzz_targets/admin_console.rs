//! The admin console's command parser, on any text a console client may send.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sluice::admin::commands::parse(&text);
});
