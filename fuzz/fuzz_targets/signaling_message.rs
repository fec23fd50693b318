//! Feeds arbitrary text to `signaling::protocol::parse`, the decoder of every WebSocket
//! text frame a client sends (bytes are decoded lossily so invalid UTF-8 still reaches
//! the JSON parser as replacement characters). Invariants: no panic; a rejected message
//! yields an error reply that serialises and echoes the id the parser kept; an accepted
//! one echoes its id in a reply the same way, and a `mcu_view` request can be checked
//! and survives re-serialisation (it is forwarded to the MCU as JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use signaling::protocol::{self, ClientMsg, McuView, ServerMsg};

/// The reply must serialise for real: `to_json` would hide a failure behind its fallback.
fn reply_echoes(msg: &ServerMsg, id: Option<&Value>) {
    let json = serde_json::to_string(msg).expect("replies serialise");
    let back: Value = serde_json::from_str(&json).expect("replies are JSON");
    assert_eq!(back.get("re"), id, "reply echoes the request id");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match protocol::parse(&text) {
        Err((re, e)) => reply_echoes(&ServerMsg::error(re.clone(), &e), re.as_ref()),
        Ok(req) => {
            if let ClientMsg::McuView { view: Some(v) } = &req.msg {
                let _ = v.check();
                // The MCU receives the view re-serialised; it must read back the same.
                let json = serde_json::to_string(v).expect("views serialise");
                let back: McuView = serde_json::from_str(&json).expect("views read back");
                assert_eq!(&back, v);
            }
            let _ = format!("{:?}", req.msg);
            reply_echoes(&ServerMsg::Pong { re: req.id.clone() }, req.id.as_ref());
        }
    }
});
