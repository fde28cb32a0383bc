//! Every decoder in `protocol` on arbitrary bytes: must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::*;

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    if let Ok(h) = Header::parse(data) {
        let payload = data.get(HEADER_LEN..).unwrap_or_default();
        if let Ok(Request::Batch(b)) = Request::parse(h.opcode, payload) {
            for e in b {
                let _ = (e.request(), e.reply());
            }
        }
        if let Ok(Reply::Batch(b)) = Reply::parse(h.opcode, h.status, payload) {
            for e in b {
                let _ = e.reply();
            }
        }
    }
    for op in 0..=10 {
        let _ = Request::parse(op, data);
        let _ = Reply::parse(op, 0, data);
    }
    let _ = Page::parse(data);
    let _ = StatsView::parse(data);
});
