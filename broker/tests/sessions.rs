//! Opening sessions, moving bytes, closing, discovery.

use std::time::{Duration, Instant};

use rexec_broker::{Announcement, BrokerError, Carrier, LostReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Nats, assert_bytes, exchange, random_bytes, rig, wait_until_async};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_arrive_exact_in_both_directions_at_once() {
    let Some(mut rig) = rig().await else { return };
    let up = random_bytes(64 << 20);
    let down = random_bytes(64 << 20);

    let (stream, accepted) = rig.session().await;
    assert_eq!(accepted.session_id(), stream.session_id());
    let (at_agent, at_ctl) = tokio::join!(
        exchange(accepted, down.clone()),
        exchange(stream, up.clone())
    );
    assert_bytes(&at_agent, &up, "ctl → agent");
    assert_bytes(&at_ctl, &down, "agent → ctl");
    assert_eq!(rig.server.varz()["slow_consumers"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_other_direction_go_on() {
    let Some(mut rig) = rig().await else { return };
    let (mut stream, mut accepted) = rig.session().await;

    stream.write_all(b"request").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"request");
    // EOF stays EOF.
    assert_eq!(accepted.read(&mut [0u8; 8]).await.unwrap(), 0);

    accepted
        .write_all(b"answer after the client's EOF")
        .await
        .unwrap();
    accepted.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"answer after the client's EOF");
    let error = stream.write_all(b"more").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_succeeds_when_the_peer_answered_and_left_before_it_was_polled_again() {
    let Some(mut rig) = rig().await else { return };
    let budget = rig.ctl.free_budget();
    let (stream, mut accepted) = rig.session().await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(b"request").await.unwrap();
    // A flush hands the bytes to the stream's task and returns at once.
    writer.flush().await.expect("handed over");

    // The agent reads the request, answers, closes and drops its end (a
    // reset after its end message), all before ctl flushes again.
    let mut got = [0u8; 7];
    accepted.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"request");
    accepted.write_all(b"answer").await.unwrap();
    accepted.shutdown().await.unwrap();
    drop(accepted);
    // ctl's side has ended (its window is back in the budget).
    assert!(wait_until_async(Duration::from_secs(10), || rig.ctl.free_budget() == budget).await);

    writer
        .flush()
        .await
        .expect("the request left: the flush succeeded");
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"answer");
}

/// More than the first window and less than one write buffer: a flush of
/// this much leaves most of it waiting for credit in the stream's task.
const BEYOND_THE_FIRST_WINDOW: usize = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flushed_before_a_drop_or_a_shutdown_all_arrive() {
    let Some(mut rig) = rig().await else { return };

    // Dropped: the peer reads every flushed byte, then the reset.
    let (mut stream, mut accepted) = rig.session().await;
    let data = random_bytes(BEYOND_THE_FIRST_WINDOW);
    stream.write_all(&data).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stream.flush())
        .await
        .expect("a flush does not wait for the peer to read")
        .unwrap();
    drop(stream);
    let mut got = Vec::new();
    let error = tokio::time::timeout(Duration::from_secs(20), accepted.read_to_end(&mut got))
        .await
        .expect("the stream ends")
        .expect_err("a dropped stream ends with a reset, not EOF");
    assert_bytes(&got, &data, "flushed, then dropped: before the reset");
    assert!(
        matches!(
            BrokerError::from_io(&error),
            Some(BrokerError::Lost(reason)) if *reason == LostReason::PeerReset
        ),
        "{error}"
    );

    // Shut down: every byte, then EOF.
    let (mut stream, accepted) = rig.session().await;
    stream.write_all(&data).await.unwrap();
    stream.flush().await.unwrap();
    let closing = tokio::spawn(async move {
        stream.shutdown().await.expect("shutdown");
        stream
    });
    let got = exchange(accepted, Vec::new()).await;
    assert_bytes(&got, &data, "flushed, then shut down: before EOF");
    closing.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_whose_peer_never_reads_gives_up_and_frees_its_window() {
    let Some(server) = Nats::start() else {
        return;
    };
    let (_agent, mut incoming) = crate::util::agent(&server, "labpc07").await;
    let ctl = Carrier::connect(server.impatient_options())
        .await
        .expect("connect");
    let budget = ctl.free_budget();
    let mut stream = ctl.dial("labpc07").await.expect("dial");
    let _accepted = incoming.recv().await.expect("accepted");
    stream
        .write_all(&random_bytes(BEYOND_THE_FIRST_WINDOW))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    drop(stream);
    // The agent's side holds its stream open and never reads: the flushed
    // bytes can never all leave, and ctl stops trying after the abandon
    // limit although the peer's heartbeats keep coming.
    assert!(
        wait_until_async(Duration::from_secs(20), || ctl.free_budget() == budget).await,
        "the dropped stream's window went back to the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_nobody_serves_is_offline_without_waiting() {
    let Some(rig) = rig().await else { return };
    let started = Instant::now();
    let error = rig.ctl.dial("labpc08").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(error, BrokerError::Offline("labpc08".to_owned()));
    assert_eq!(error.kind(), "offline");
    assert_eq!(
        error.to_string(),
        "agent labpc08 is not connected to the broker"
    );
    // The open timeout is 10 s; "no responders" comes back at once.
    assert!(took < Duration::from_secs(1), "offline took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_would_add_subject_tokens_are_refused_before_the_broker() {
    let Some(server) = Nats::start() else {
        return;
    };
    let carrier = server.carrier().await;
    for name in ["lab.pc07", "*", ">", "lab pc07", ""] {
        assert!(
            matches!(carrier.dial(name).await, Err(BrokerError::BadName(_))),
            "dial {name:?}"
        );
        assert!(
            matches!(carrier.listen(name).await, Err(BrokerError::BadName(_))),
            "listen {name:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_collects_every_agent_with_its_fingerprint_and_version() {
    let Some(server) = Nats::start() else {
        return;
    };
    let mut responders = Vec::new();
    let mut carriers = Vec::new();
    for name in ["labpc02", "labpc01", "labpc03"] {
        let carrier = server.carrier().await;
        responders.push(
            carrier
                .announce(Announcement {
                    name: name.to_owned(),
                    fingerprint: format!("SHA256:{name}{}", "A".repeat(43 - name.len())),
                    version: "0.1.0".to_owned(),
                })
                .await
                .expect("announce"),
        );
        carriers.push(carrier);
    }
    let ctl = server.carrier().await;
    let found = ctl
        .discover(Duration::from_millis(500))
        .await
        .expect("discover");
    let names: Vec<_> = found.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["labpc01", "labpc02", "labpc03"]);
    assert_eq!(
        found[0].fingerprint,
        format!("SHA256:labpc01{}", "A".repeat(36))
    );
    assert_eq!(found[0].version, "0.1.0");

    drop(responders.pop());
    let found = ctl
        .discover(Duration::from_millis(500))
        .await
        .expect("discover");
    assert_eq!(found.len(), 2, "a dropped responder no longer answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_to_one_agent_stay_apart() {
    let Some(mut rig) = rig().await else { return };
    let mut pairs = Vec::new();
    for _ in 0..20 {
        pairs.push(rig.session().await);
    }
    let mut runs = Vec::new();
    for (i, (stream, accepted)) in pairs.into_iter().enumerate() {
        let up = format!("session {i} up").repeat(1000).into_bytes();
        let down = format!("session {i} down").repeat(1000).into_bytes();
        runs.push(tokio::spawn(async move {
            let (a, c) = tokio::join!(
                exchange(accepted, down.clone()),
                exchange(stream, up.clone())
            );
            a == up && c == down
        }));
    }
    for run in runs {
        assert!(run.await.unwrap());
    }
    let full = rexec_broker::Tuning::default().receive_budget as usize;
    assert!(
        wait_until_async(Duration::from_secs(5), || rig.ctl.free_budget() == full).await,
        "closed streams gave their windows back"
    );
}

/// Bulk streams grow their windows only as far as leaves room for new
/// streams' start windows: before, a few uploads to one agent took its
/// whole receive budget and every later session was refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_windows_leave_room_for_new_sessions() {
    // Small enough that one upload's window would take it all.
    const BUDGET: u32 = 1 << 20;
    const RESERVED_STARTS: usize = 64;
    let Some(server) = Nats::start() else {
        return;
    };
    let mut options = server.options();
    options.tuning.receive_budget = BUDGET;
    options.tuning.reserved_starts = RESERVED_STARTS;
    let agent = Carrier::connect(options).await.expect("connect");
    let mut listener = agent.listen("labpc07").await.expect("listen");
    let ctl = server.carrier().await;

    // An upload whose reader keeps up: its window grows as far as it may
    // (before, to the whole budget), a few MiB at a time, bounded.
    let reserve = RESERVED_STARTS * 2048;
    let mut stream = ctl.dial("labpc07").await.expect("dial");
    let mut accepted = listener.accept().await.expect("accepted");
    let chunk = random_bytes(1 << 20);
    let mut rounds = 0;
    while agent.free_budget() > reserve + (16 << 10) && rounds < 64 {
        let write = async {
            for _ in 0..4 {
                stream.write_all(&chunk).await.unwrap();
            }
            stream.flush().await.unwrap();
        };
        let read = async {
            let mut buf = vec![0u8; 1 << 16];
            let mut left = 4 << 20;
            while left > 0 {
                left -= accepted.read(&mut buf).await.unwrap();
            }
        };
        tokio::join!(write, read);
        rounds += 1;
    }
    let free = agent.free_budget();
    assert!(
        free <= reserve + (16 << 10),
        "the window never grew: {free} free after {rounds} rounds"
    );
    assert!(free >= reserve, "growth took the reserve: {free} free");
    // Every new session still gets its start window.
    for _ in 0..16 {
        crate::util::exchange_and_check(listener.accept(), &ctl, "labpc07").await;
    }
    drop((stream, accepted));
}
