//! Two simulated terminals talk directly over loopback (no server): one publishes, the
//! other answers and must decode every frame's marker, with no gap in any counter.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use endpoints_sim::{MediaConfig, PeerConfig, PeerHandle, Stats};

#[tokio::test(flavor = "current_thread")]
#[allow(clippy::disallowed_methods)] // the test is the shell: it owns the clock
async fn peer_to_peer_media_has_zero_loss() {
    let epoch = Instant::now();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let tx_stats = Arc::new(Stats::default());
    let rx_stats = Arc::new(Stats::default());
    let publisher = PeerHandle::spawn(
        lo,
        PeerConfig {
            id: 42,
            epoch,
            seed: 1,
            media: Some(MediaConfig::default()),
        },
        tx_stats.clone(),
    )
    .await
    .unwrap();
    let receiver = PeerHandle::spawn(
        lo,
        PeerConfig {
            id: 43,
            epoch,
            seed: 2,
            media: None,
        },
        rx_stats.clone(),
    )
    .await
    .unwrap();

    let (offer, tracks) = publisher.create_offer().await.unwrap();
    assert_eq!(tracks.len(), 2);
    let answer = receiver.accept_offer(offer).await.unwrap();
    publisher.accept_answer(answer).await.unwrap();

    tokio::time::timeout(
        Duration::from_secs(10),
        receiver.wait_for(|s| s.video_senders == 1),
    )
    .await
    .expect("video arrives")
    .unwrap();
    rx_stats.set_recording(true);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let tx = tx_stats.snapshot();
    let rx = rx_stats.snapshot();
    let mut lat = rx_stats.take_latencies();
    publisher.close().await;
    receiver.close().await;

    assert!(rx.video_frames_received >= 80, "{rx:?}");
    assert!(rx.audio_frames_received >= 140, "{rx:?}");
    assert_eq!(rx.frames_lost, 0, "{rx:?}");
    assert_eq!(rx.frames_late, 0, "{rx:?}");
    assert_eq!(rx.frames_unreadable, 0, "{rx:?}");
    // 1.5 Mbit/s of ~1200-byte packets is well over 100 packets a second.
    assert!(rx.rtp_packets_received > 3 * 100, "{rx:?}");
    assert!(
        tx.rtp_packets_sent >= rx.rtp_packets_received,
        "{tx:?} {rx:?}"
    );
    let p50 = endpoints_sim::stats::quantile(&mut lat, 0.5).unwrap();
    assert!(p50 < 50_000, "loopback latency p50 {p50} us");
}
