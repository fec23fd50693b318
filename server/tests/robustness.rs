//! Garbage, truncated and oversized input on the signalling socket and the media port
//! must get clear errors (or be dropped) while the meeting keeps being served.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{connect, expect, send, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_ports_leaves_the_meeting_running() {
    let srv = start_server(&[]);
    let mut a = connect(srv.http).await;

    // Before join: requests are refused with not_joined, and the socket stays.
    send(&mut a, json!({"type": "ping", "id": 1})).await;
    let e = expect(&mut a, "error").await;
    assert_eq!(e["code"], "not_joined");
    assert_eq!(e["re"], 1);

    send(&mut a, json!({"type": "join", "v": 1, "meeting": "4242", "name": "主会场", "create": true, "id": "j"})).await;
    let joined = expect(&mut a, "joined").await;
    assert_eq!(joined["role"], "host");
    assert_eq!(joined["re"], "j");

    // Garbage text frames: each gets an error with a stable code.
    let garbage: Vec<(String, &str)> = vec![
        ("{".into(), "bad_request"),
        ("".into(), "bad_request"),
        ("null".into(), "bad_request"),
        (r#"{"type":"join","v":1,"meeting":"4242","name":"x"}"#.into(), "already_joined"),
        (r#"{"type":"offer","pc":"pub","sdp":"v=0 garbage"}"#.into(), "sdp_rejected"),
        (r#"{"type":"answer","pc":"sub","sdp":"nonsense"}"#.into(), "sdp_rejected"),
        (r#"{"type":"subscribe","track":"t999"}"#.into(), "unknown_track"),
        (r#"{"type":"host","action":"remove","participant":"p999"}"#.into(), "unknown_participant"),
        (r#"{"type":"mute","source":"nose","muted":true}"#.into(), "bad_request"),
        (format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100_000)), "message_too_large"),
        ("\u{0}\u{1}\u{2}".into(), "bad_request"),
        (r#"{"type":"offer","pc":"pub","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}"#.into(), "sdp_rejected"),
    ];
    for (text, code) in &garbage {
        a.send(Message::Text(text.clone().into())).await.unwrap();
        let e = expect(&mut a, "error").await;
        assert_eq!(
            e["code"],
            *code,
            "for input {:?}",
            &text[..text.len().min(80)]
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await
        .unwrap();
    assert_eq!(expect(&mut a, "error").await["code"], "bad_request");

    // Garbage on the media port: random bytes, truncated RTP/RTCP, STUN- and DTLS-looking junk.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u32 = 0x9e37_79b9;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..3000 {
        let len = (rnd() % 1400) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match i % 5 {
            0 if len > 0 => pkt[0] = 0x80, // RTP version bits
            1 if len > 1 => pkt[..2].copy_from_slice(&[0x80, 200]), // RTCP SR
            2 if len > 1 => pkt[..2].copy_from_slice(&[0x00, 0x01]), // STUN binding request
            3 if len > 0 => pkt[0] = 22,   // DTLS handshake
            _ => {}
        }
        pkt.truncate(len);
        let _ = udp.send_to(&pkt, srv.udp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The meeting still works: a second participant joins and the first one hears of it.
    let mut b = connect(srv.http).await;
    send(
        &mut b,
        json!({"type": "join", "v": 1, "meeting": "4242", "name": "分会场"}),
    )
    .await;
    let jb = expect(&mut b, "joined").await;
    assert_eq!(jb["participants"].as_array().unwrap().len(), 2);
    let pj = expect(&mut a, "participant_joined").await;
    assert_eq!(pj["participant"]["name"], "分会场");
    send(&mut a, json!({"type": "ping", "id": 2})).await;
    assert_eq!(expect(&mut a, "pong").await["re"], 2);

    // Host control still works after all that.
    send(&mut a, json!({"type": "host", "action": "lock", "id": 3})).await;
    assert_eq!(expect(&mut a, "ok").await["re"], 3);
    let mut c = connect(srv.http).await;
    send(
        &mut c,
        json!({"type": "join", "v": 1, "meeting": "4242", "name": "late"}),
    )
    .await;
    assert_eq!(expect(&mut c, "error").await["code"], "meeting_locked");

    // Health and metrics answer, and the media junk was counted, not fatal.
    let body = http_get(srv.http, "/metrics").await;
    let unparsed = metric(&body, "huitong_sfu_datagrams_unparseable_total")
        + metric(&body, "huitong_sfu_datagrams_unmatched_total");
    assert!(
        unparsed >= 1000.0,
        "junk datagrams were not counted: {body}"
    );
    assert!(http_get(srv.http, "/healthz").await.contains("\"ok\""));

    // A frame beyond the transport limit closes only that connection.
    let mut d = connect(srv.http).await;
    let _ = d
        .send(Message::Text("x".repeat(5 * 1024 * 1024).into()))
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match d.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "an oversized frame must close its connection");
    send(&mut b, json!({"type": "ping", "id": 9})).await;
    assert_eq!(expect(&mut b, "pong").await["re"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_meeting_and_wrong_passcode_are_clear_errors() {
    let srv = start_server(&[]);
    let mut a = connect(srv.http).await;
    send(
        &mut a,
        json!({"type": "join", "v": 1, "meeting": "999000", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut a, "error").await["code"], "unknown_meeting");
    send(
        &mut a,
        json!({"type": "join", "v": 2, "meeting": "999000", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut a, "error").await["code"], "unsupported_version");
    send(
        &mut a,
        json!({"type": "join", "v": 1, "meeting": "12a", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut a, "error").await["code"], "bad_request");
    send(&mut a, json!({"type": "join", "v": 1, "meeting": "777000", "passcode": "1234", "name": "h", "create": true})).await;
    expect(&mut a, "joined").await;
    let mut b = connect(srv.http).await;
    send(
        &mut b,
        json!({"type": "join", "v": 1, "meeting": "777000", "passcode": "0000", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut b, "error").await["code"], "wrong_passcode");
    send(
        &mut b,
        json!({"type": "join", "v": 1, "meeting": "777000", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut b, "error").await["code"], "wrong_passcode");
    // Only the in-process connection may join as a service member (it skips the passcode).
    send(
        &mut b,
        json!({"type": "join", "v": 1, "meeting": "777000", "name": "x", "kind": "mcu"}),
    )
    .await;
    assert_eq!(expect(&mut b, "error").await["code"], "bad_request");
    send(
        &mut b,
        json!({"type": "join", "v": 1, "meeting": "777000", "passcode": "1234", "name": "x"}),
    )
    .await;
    assert_eq!(expect(&mut b, "joined").await["role"], "participant");
    // Unknown API paths answer JSON errors.
    let r = http_get(srv.http, "/api/nope").await;
    assert!(r.contains("\"code\":\"not_found\""), "{r}");
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    common::http(addr, "GET", path, None, None).await.1
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
