//! restic's JSON output (0.14 to 0.18+): `backup --json` lines, `restore --json` lines, the
//! `snapshots --json` array and stderr tails, whatever restic (or a broken pipe, or a newer
//! restic) writes. Parsing never panics and text tails stay bounded.
#![no_main]

use coracle_volume_job::restic::{json, restore, snapshots, tail};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    for line in text.split('\n') {
        let _ = json::parse_line(line);
        let _ = json::parse_restore_line(line);
        let _ = restore::parse_ignored_error(line);
    }
    if let Ok(list) = snapshots::parse_snapshots(&text) {
        let _ = snapshots::newest(list);
    }
    let t = tail(&text);
    // 1500 bytes plus the ellipsis, cut on a character boundary.
    assert!(t.len() <= 1500 + 8, "a tail stays bounded: {} bytes", t.len());
});
