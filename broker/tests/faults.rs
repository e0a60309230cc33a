//! Hostile and failing surroundings: a reader that stops, messages that do
//! not belong to the stream, a broker restart, a peer that vanishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rexec_broker::flow::MAX_WINDOW;
use rexec_broker::wire::{Header, Kind, MAX_PAYLOAD, OpenRequest};
use rexec_broker::{
    Announcement, BrokerError, BrokerStream, Carrier, LostReason, OpenRefusal, SessionId, Subjects,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Nats, exchange, exchange_and_check, rig, wait_until_async};

fn lost_reason(error: &std::io::Error) -> Option<LostReason> {
    match BrokerError::from_io(error) {
        Some(BrokerError::Lost(reason)) => Some(*reason),
        _ => None,
    }
}

/// Reads until the stream fails; the failure's reason.
async fn read_until_failure(stream: &mut BrokerStream) -> Option<LostReason> {
    let mut buf = vec![0u8; 65536];
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return lost_reason(&e),
            }
        }
    })
    .await;
    outcome.expect("the stream ended within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_blocks_the_writer_and_the_server_sees_no_slow_consumer() {
    let Some(mut rig) = rig().await else { return };
    let (mut reader, mut writer) = rig.session().await;

    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let endless = tokio::spawn(async move {
        let chunk = vec![0x5a_u8; 16 * 1024];
        while writer.write_all(&chunk).await.is_ok() {
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });

    // Read a while so the window has grown as far as it will, then stop.
    let mut read = 0u64;
    let mut buf = vec![0u8; 65536];
    while read < 16 << 20 {
        read += reader.read(&mut buf).await.expect("read") as u64;
    }
    // The writer must come to a standstill: the same count for a full
    // second, checked every 100 ms, within 20 s.
    let mut last = written.load(Ordering::SeqCst);
    let mut still = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 10 {
            break;
        }
    }
    assert!(still >= 10, "the writer never stopped (wrote {last} bytes)");
    let in_flight = last - read;
    let bound = u64::from(MAX_WINDOW) + 2 * MAX_PAYLOAD as u64;
    assert!(
        in_flight <= bound,
        "{in_flight} bytes written past the reader, more than {bound}"
    );
    assert_eq!(
        rig.server.varz()["slow_consumers"],
        0,
        "{}",
        rig.server.varz()
    );

    // Reading again lets the writer go on.
    let mut more = 0u64;
    while more < 8 << 20 {
        more += reader.read(&mut buf).await.expect("read") as u64;
    }
    assert!(
        written.load(Ordering::SeqCst) > last,
        "the writer went on once read"
    );
    assert_eq!(rig.server.varz()["slow_consumers"], 0);
    drop(reader);
    tokio::time::timeout(Duration::from_secs(20), endless)
        .await
        .expect("the writer ends once the reader is gone")
        .unwrap();
}

/// A raw NATS connection that publishes whatever a test wants.
async fn raw(server: &Nats) -> async_nats::Client {
    async_nats::connect(server.url.as_str())
        .await
        .expect("raw connect")
}

/// Sends an open request for `session` with `window` of credit to
/// labpc07 from `client`, as ctl would; returns the agent's answer.
async fn open_raw(
    client: &async_nats::Client,
    session: SessionId,
    window: u32,
) -> serde_json::Value {
    let request = OpenRequest {
        session: session.to_string(),
        window,
        probe: false,
        instance: None,
    };
    let reply = client
        .request(
            Subjects::default().open("labpc07"),
            serde_json::to_vec(&request).unwrap().into(),
        )
        .await
        .expect("answered");
    serde_json::from_slice(&reply.payload).expect("a JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_out_of_order_messages_end_only_their_stream() {
    let Some(mut rig) = rig().await else { return };
    let intruder = raw(&rig.server).await;
    let subjects = Subjects::default();

    let data = |seq: u64, len: usize| {
        let mut message = Header {
            kind: Kind::Data,
            seq,
            grant: 0,
        }
        .encode()
        .to_vec();
        message.resize(message.len() + len, b'x');
        Bytes::from(message)
    };
    let cases = [
        (
            "garbage",
            Bytes::from_static(b"not a stream message at all"),
            LostReason::Malformed,
        ),
        ("oversized", data(0, MAX_PAYLOAD + 1), LostReason::Oversized),
        (
            "out of order",
            data(7, 10),
            LostReason::OutOfSequence {
                expected: 0,
                got: 7,
            },
        ),
        ("over credit", data(0, 60_000), LostReason::OverCredit),
    ];
    let (bystander, bystander_agent) = rig.session().await;

    for (what, message, reason) in cases {
        let (mut stream, mut accepted) = rig.session().await;
        let subject = subjects.from_ctl("labpc07", stream.session_id());
        intruder.publish(subject, message).await.unwrap();
        intruder.flush().await.unwrap();
        assert_eq!(
            read_until_failure(&mut accepted).await,
            Some(reason),
            "{what}"
        );
        // The agent's side tells ctl's side, which ends too.
        assert_eq!(
            read_until_failure(&mut stream).await,
            Some(LostReason::PeerReset),
            "{what}"
        );
    }

    let up = b"still working".repeat(10_000);
    let down = b"still answering".repeat(10_000);
    let (a, c) = tokio::join!(
        exchange(bystander_agent, down.clone()),
        exchange(bystander, up.clone())
    );
    assert!(a == up && c == down, "the other stream is untouched");
    // And new sessions open as before.
    exchange_and_check(rig.incoming.recv(), &rig.ctl, "labpc07").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_open_requests_are_refused_and_the_agent_serves_on() {
    let Some(mut rig) = rig().await else { return };
    let intruder = raw(&rig.server).await;
    let open = Subjects::default().open("labpc07");
    for payload in [
        &b"garbage"[..],
        br#"{"session":"nothex","window":2048}"#,
        br#"{"session":"00112233445566778899aabbccddeeff","window":0}"#,
        &[b'{'; 5000][..],
    ] {
        let reply = intruder
            .request(open.clone(), Bytes::copy_from_slice(payload))
            .await
            .expect("answered");
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(
            answer["accepted"],
            false,
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(answer["refused"], "bad-request");
    }
    // A message without a reply subject is dropped.
    intruder
        .publish(open.clone(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    exchange_and_check(rig.incoming.recv(), &rig.ctl, "labpc07").await;
}

/// Anyone on the broker can send open and discovery requests: those
/// turned away are reported to the agent, to count under its limit, and
/// nothing answers a reply subject that is not an inbox, where one
/// request would become an answer from every agent at another agent's
/// open subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_opens_are_reported_and_only_reply_inboxes_are_answered() {
    let Some(server) = Nats::start() else {
        return;
    };
    let reported = Arc::new(std::sync::Mutex::new(Vec::new()));
    let agent = server.carrier().await;
    let seen = reported.clone();
    let mut listener = agent
        .listen_reporting(
            "labpc07",
            Arc::new(move |why: OpenRefusal| {
                seen.lock().unwrap().push(why);
            }),
        )
        .await
        .expect("listen");
    let _announcing = agent
        .announce(Announcement {
            name: "labpc07".to_owned(),
            fingerprint: format!("SHA256:{}", "x".repeat(42) + "A"),
            version: "0".to_owned(),
        })
        .await
        .expect("announce");
    let intruder = raw(&server).await;
    let subjects = Subjects::default();
    // A victim's open subject, watched.
    let mut victim = intruder
        .subscribe(subjects.open("labpc08"))
        .await
        .expect("subscribe");
    for _ in 0..50 {
        intruder
            .publish_with_reply(subjects.discover(), subjects.open("labpc08"), Bytes::new())
            .await
            .unwrap();
        intruder
            .publish_with_reply(
                subjects.open("labpc07"),
                subjects.open("labpc08"),
                Bytes::from_static(b"garbage"),
            )
            .await
            .unwrap();
        intruder
            .publish(subjects.open("labpc07"), Bytes::from_static(b"garbage"))
            .await
            .unwrap();
    }
    intruder.flush().await.unwrap();
    let reply = intruder
        .request(subjects.open("labpc07"), Bytes::from_static(b"garbage"))
        .await
        .expect("a request with an inbox is answered");
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answer["refused"], "bad-request");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), victim.next())
            .await
            .is_err(),
        "something answered at another agent's open subject"
    );
    let reported = reported.lock().unwrap().clone();
    let count = |why| reported.iter().filter(|&&r| r == why).count();
    assert_eq!(count(OpenRefusal::NoReply), 100, "{reported:?}");
    assert_eq!(count(OpenRefusal::BadRequest), 1, "{reported:?}");
    // Discovery from a ctl still finds the agent, and it still serves.
    let ctl = server.carrier().await;
    let found = ctl.discover(Duration::from_millis(300)).await.unwrap();
    assert_eq!(found.len(), 1);
    exchange_and_check(listener.accept(), &ctl, "labpc07").await;
}

/// Two agents under one name both accept every session and both answer on
/// its subjects, so every session fails. Before, that read as messages
/// missing or out of order, and neither agent knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_under_one_name_know_it_and_ctl_says_so() {
    let Some(server) = Nats::start() else {
        return;
    };
    let first = server.carrier().await;
    let mut first_listener = first.listen("labpc07").await.expect("listen");
    assert_eq!(first.probe("labpc07").await, Ok(()), "alone on the name");
    let second = server.carrier().await;
    let mut second_listener = second
        .listen("labpc07")
        .await
        .expect("the second agent still listens");
    // The second sees the first's answer to its probe; the first saw the
    // second's probe arrive.
    assert_eq!(
        second.probe("labpc07").await,
        Err(BrokerError::NameClash("labpc07".to_owned()))
    );
    assert!(first.state().name_clashes >= 1, "{:?}", first.state());
    assert_eq!(
        first.probe("labpc07").await,
        Err(BrokerError::NameClash("labpc07".to_owned()))
    );

    // ctl: both accept; the session fails naming the clash.
    let ctl = server.carrier().await;
    let mut stream = ctl.dial("labpc07").await.expect("dial");
    let _a = first_listener.accept().await.expect("first accepted");
    let _b = second_listener.accept().await.expect("second accepted");
    let error = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut [0u8; 16]))
        .await
        .expect("the session fails at once")
        .expect_err("the session fails");
    assert_eq!(
        BrokerError::from_io(&error),
        Some(&BrokerError::NameClash("labpc07".to_owned())),
        "{error}"
    );
    assert_eq!(
        BrokerError::NameClash("labpc07".to_owned()).to_string(),
        "two agents answer to the name labpc07 on the broker, so sessions to it fail; give each agent a name of its own (rexec-agent run --name, or name in [broker]; the default is the host name up to its first dot)"
    );

    // Once one is gone, the other is alone again.
    drop(second_listener);
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first.probe("labpc07").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first agent never found itself alone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    exchange_and_check(first_listener.accept(), &ctl, "labpc07").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_ends_the_stream_and_the_next_dial_works() {
    let Some(mut server) = Nats::start() else {
        return;
    };
    let mut agent_options = server.options();
    agent_options.retry_forever = true;
    let agent_carrier = Carrier::connect(agent_options)
        .await
        .expect("agent connects");
    let mut ctl_options = server.options();
    ctl_options.retry_forever = true;
    let ctl = Carrier::connect(ctl_options).await.expect("ctl connects");
    // Retrying carriers return before they are connected; listening once
    // connected also checks that the broker holds our subscription.
    assert!(
        wait_until_async(Duration::from_secs(10), || {
            agent_carrier.state().connected && ctl.state().connected
        })
        .await
    );
    let mut listener = agent_carrier.listen("labpc07").await.expect("listen");

    let mut stream = ctl.dial("labpc07").await.expect("dial");
    let mut accepted = listener.accept().await.expect("accepted");
    stream.write_all(b"before").await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 6];
    accepted.read_exact(&mut buf).await.unwrap();

    server.stop();
    assert_eq!(
        read_until_failure(&mut stream).await,
        Some(LostReason::BrokerDisconnected)
    );
    assert_eq!(
        read_until_failure(&mut accepted).await,
        Some(LostReason::BrokerDisconnected)
    );
    let error = stream.write_all(b"after").await.unwrap_err();
    assert_eq!(lost_reason(&error), Some(LostReason::BrokerDisconnected));
    assert!(!ctl.state().connected);

    server.restart();
    let both_up = wait_until_async(Duration::from_secs(30), || {
        agent_carrier.state().connected && ctl.state().connected
    })
    .await;
    assert!(both_up, "both sides reconnect by themselves");
    assert!(agent_carrier.state().disconnects >= 1);

    exchange_and_check(listener.accept(), &ctl, "labpc07").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_is_given_up_and_its_window_freed() {
    let Some(server) = Nats::start() else {
        return;
    };
    let agent_carrier = Carrier::connect(server.impatient_options())
        .await
        .expect("connect");
    let mut listener = agent_carrier.listen("labpc07").await.expect("listen");
    let full = agent_carrier.free_budget();

    // A client that opens a session and then says nothing, ever.
    let ghost = raw(&server).await;
    let session = SessionId::random().unwrap();
    let answer = open_raw(&ghost, session, 4096).await;
    assert_eq!(answer["accepted"], true, "{answer}");
    let mut accepted = listener.accept().await.expect("accepted");
    assert!(agent_carrier.free_budget() < full);
    assert_eq!(
        read_until_failure(&mut accepted).await,
        Some(LostReason::PeerSilent)
    );
    assert!(
        wait_until_async(Duration::from_secs(5), || agent_carrier.free_budget()
            == full)
        .await,
        "the abandoned stream's window went back to the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_without_closing_ends_the_peer_at_once() {
    let Some(mut rig) = rig().await else { return };
    let (stream, mut accepted) = rig.session().await;
    drop(stream);
    assert_eq!(
        read_until_failure(&mut accepted).await,
        Some(LostReason::PeerReset)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_just_before_a_drop_reach_the_peer_ahead_of_the_reset() {
    // As over TCP, where close() still sends what was written: a TLS alert
    // written just before the stream is dropped (a refused client) must
    // reach the peer, or it cannot say why it was refused.
    let Some(mut rig) = rig().await else { return };
    let (mut stream, mut accepted) = rig.session().await;
    stream.write_all(b"last words").await.unwrap();
    drop(stream);
    let mut got = vec![0u8; 10];
    tokio::time::timeout(Duration::from_secs(20), accepted.read_exact(&mut got))
        .await
        .expect("within 20 s")
        .expect("the bytes before the reset");
    assert_eq!(got, b"last words");
    assert_eq!(
        read_until_failure(&mut accepted).await,
        Some(LostReason::PeerReset)
    );
}

/// A stranger's open request whose credit (1 byte) never grows, accepted
/// and answered by the application with a few bytes (the TLS alert that
/// refuses it), then dropped. Returns once the drop was made.
async fn open_and_refuse_a_stranger(
    intruder: &async_nats::Client,
    listener: &mut rexec_broker::Listener,
) {
    let answer = open_raw(intruder, SessionId::random().unwrap(), 1).await;
    assert_eq!(answer["accepted"], true, "{answer}");
    let mut stream = listener.accept().await.expect("accepted");
    stream
        .write_all(b"\x15\x03\x03\x00\x02\x02\x30")
        .await
        .unwrap();
    drop(stream);
}

/// Anyone on the broker can open sessions to an agent and never give it
/// credit; the agent refuses them before authentication and drops them,
/// with the bytes of its refusal still unsent. Before, each dropped
/// stream held its receive window until those bytes left or the abandon
/// limit (90 s) passed: a stranger's opens took the agent's whole receive
/// budget and every real session was refused as busy. Now a dropped
/// stream gives its window back at once, whatever it still sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_who_never_give_credit_cannot_use_up_the_receive_budget() {
    // Room for 32 start windows.
    const BUDGET: u32 = 64 << 10;
    let Some(server) = Nats::start() else {
        return;
    };
    let mut options = server.options();
    options.tuning.receive_budget = BUDGET;
    let agent = Carrier::connect(options).await.expect("connect");
    let mut listener = agent.listen("labpc07").await.expect("listen");
    let full = agent.free_budget();
    let intruder = raw(&server).await;
    // Subscribed to the agent's half, as a stranger would be to hold the
    // streams (the broker then says that the peer is there).
    let _reading = intruder
        .subscribe("rexec.v1.agent.labpc07.session.*.from-agent")
        .await
        .unwrap();
    for _ in 0..100 {
        open_and_refuse_a_stranger(&intruder, &mut listener).await;
    }
    assert!(
        wait_until_async(Duration::from_secs(5), || agent.free_budget() == full).await,
        "the dropped streams' windows went back to the budget: {} of {full} free",
        agent.free_budget()
    );
    let ctl = server.carrier().await;
    exchange_and_check(listener.accept(), &ctl, "labpc07").await;
}

/// The subscriptions of `server`'s connections on subjects ending in
/// `suffix`.
fn subscriptions_ending_in(server: &Nats, suffix: &str) -> usize {
    let connz = server.monitoring("/connz?subs=1");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
        .filter(|s| s.as_str().is_some_and(|s| s.ends_with(suffix)))
        .count()
}

/// Dropped streams that still owe their peer bytes linger to send them,
/// as a closed socket does, but only so many at once per connection: the
/// rest end at once after one try, so strangers' streams cannot pile up
/// subscriptions and tasks for the abandon limit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_so_many_dropped_streams_linger_at_once() {
    const LINGERING: usize = 4;
    let Some(server) = Nats::start() else {
        return;
    };
    let mut options = server.options();
    options.tuning.max_lingering = LINGERING;
    let agent = Carrier::connect(options).await.expect("connect");
    let mut listener = agent.listen("labpc07").await.expect("listen");
    let intruder = raw(&server).await;
    for _ in 0..3 * LINGERING {
        open_and_refuse_a_stranger(&intruder, &mut listener).await;
    }
    let settled = wait_until_async(Duration::from_secs(5), || {
        subscriptions_ending_in(&server, ".from-ctl") == LINGERING
    })
    .await;
    assert!(
        settled,
        "{} streams' subscriptions left, not {LINGERING}",
        subscriptions_ending_in(&server, ".from-ctl")
    );
    // New sessions open as before.
    let ctl = server.carrier().await;
    exchange_and_check(listener.accept(), &ctl, "labpc07").await;
}

/// The check that the broker lets us serve a name is a request to
/// ourselves; one that does not come back in time (a busy broker, as when
/// a whole lab's agents start at once) says nothing of our subscription.
/// Before, it failed `listen`, and the agent served nothing through the
/// broker until it was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_request_that_does_not_come_back_in_time_still_serves_the_name() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(server) = Nats::start() else {
        return;
    };
    let mut options = server.options();
    options.tuning.open_timeout = Duration::from_millis(500);
    let agent = Carrier::connect(options).await.expect("connect");
    // The broker stalls while we subscribe and check, then goes on.
    let broker = Pid::from_raw(i32::try_from(server.pid()).unwrap());
    kill(broker, Signal::SIGSTOP).unwrap();
    let listening = agent.listen("labpc07").await;
    kill(broker, Signal::SIGCONT).unwrap();
    let mut listener = listening.expect("listening despite the check");
    let ctl = server.carrier().await;
    exchange_and_check(listener.accept(), &ctl, "labpc07").await;
}

/// A ctl that died while its command's output waited for credit: the
/// agent asks the broker whether it is still subscribed. Anyone with a
/// wildcard subscription over the sessions (here a bystander, as a ctl
/// user or an admin watching the broker may be) makes the broker say yes.
/// Before, that held the stream, and the command, for as long as the
/// bystander stayed; now the broker's word holds a peer that itself says
/// nothing only for `hold_silent`, then the abandon limit ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bystanders_wildcard_subscription_keeps_a_dead_peers_stream_only_so_long() {
    let Some(server) = Nats::start() else {
        return;
    };
    let mut options = server.impatient_options();
    options.tuning.timers.peer_check = Some(Duration::from_millis(200));
    options.tuning.timers.hold_silent = Duration::from_secs(1);
    let agent = Carrier::connect(options).await.expect("connect");
    let mut listener = agent.listen("labpc07").await.expect("listen");
    let bystander = raw(&server).await;
    let _watching = bystander
        .subscribe("rexec.v1.agent.labpc07.session.*.from-agent")
        .await
        .unwrap();
    bystander.flush().await.unwrap();

    // The ctl: opens with a small window, reads nothing, and dies.
    let ctl = raw(&server).await;
    let session = SessionId::random().unwrap();
    let _reading = ctl
        .subscribe(Subjects::default().from_agent("labpc07", session))
        .await
        .unwrap();
    let answer = open_raw(&ctl, session, 4096).await;
    assert_eq!(answer["accepted"], true, "{answer}");
    let mut accepted = listener.accept().await.expect("accepted");
    ctl.drain().await.unwrap();

    // The command's output: more than the window, so it waits for credit.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'y'; 64 << 10];
        loop {
            if let Err(e) = accepted.write_all(&chunk).await {
                return lost_reason(&e);
            }
            if let Err(e) = accepted.flush().await {
                return lost_reason(&e);
            }
        }
    });
    // 1 s held, then 0.8 s of the abandon limit; 10 s is far beyond.
    let ended = tokio::time::timeout(Duration::from_secs(10), writer).await;
    assert_eq!(
        ended.expect("the stream ended within 10 s").unwrap(),
        Some(LostReason::PeerSilent)
    );
}

/// A stream closed just as the broker goes away: its end message waits
/// for a connection that is not coming back soon. The close fails
/// (`lost`) once the connection is seen down, instead of waiting for the
/// broker's return (before, it waited with the session's slot held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_while_the_broker_is_down_fails_instead_of_waiting_for_it() {
    let Some(mut server) = Nats::start() else {
        return;
    };
    let mut agent_options = server.options();
    agent_options.retry_forever = true;
    let agent_carrier = Carrier::connect(agent_options).await.expect("agent");
    assert!(wait_until_async(Duration::from_secs(10), || agent_carrier.state().connected).await);
    let mut listener = agent_carrier.listen("labpc07").await.expect("listen");
    let ctl = server.carrier().await;
    let mut stream = ctl.dial("labpc07").await.expect("dial");
    let mut accepted = listener.accept().await.expect("accepted");
    stream.write_all(b"hello").await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 5];
    accepted.read_exact(&mut buf).await.unwrap();

    server.stop();
    // May fail already, if the stream has seen the connection drop.
    let _ = accepted.write_all(b"last words").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), accepted.shutdown()).await;
    // Written to the connection's socket before the drop was seen, the
    // end message counts as sent, as a close(2) on TCP succeeds then.
    if let Err(error) = closed.expect("the close ended within 10 s, the broker still down") {
        assert_eq!(lost_reason(&error), Some(LostReason::BrokerDisconnected));
    }
}

/// An open answered, before any TLS, by whoever can answer at our inbox:
/// its reason is passed on only if it is one of our own words, so a
/// 200 KB reason with a bidi override is not shown to the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_words_not_ours_is_not_passed_on() {
    let Some(server) = Nats::start() else {
        return;
    };
    let impostor = raw(&server).await;
    let mut opens = impostor
        .subscribe(Subjects::default().open("labpc09"))
        .await
        .unwrap();
    impostor.flush().await.unwrap();
    let answering = tokio::spawn(async move {
        let mut reasons = vec![
            "busy".to_owned(),
            format!("{}\u{202e}evil", "x".repeat(200_000)),
        ];
        while let Some(open) = opens.next().await {
            let Some(reason) = reasons.pop() else { break };
            let answer = serde_json::json!({"accepted": false, "refused": reason});
            let reply = open.reply.expect("a reply inbox");
            impostor
                .publish(reply, serde_json::to_vec(&answer).unwrap().into())
                .await
                .unwrap();
        }
    });
    let ctl = server.carrier().await;
    let reason = |error: BrokerError| match error {
        BrokerError::Refused { reason, .. } => reason,
        other => panic!("not a refusal: {other:?}"),
    };
    let first = ctl.dial("labpc09").await.expect_err("refused");
    assert_eq!(reason(first), "a reason we do not know");
    let second = ctl.dial("labpc09").await.expect_err("refused");
    assert_eq!(reason(second), "busy");
    answering.abort();
}

/// Anyone who reads a session's subjects knows its id. A second open
/// under a live session's id is refused: before, it made a second stream
/// on the same subjects, whose messages collided with the first's and
/// ended it ("out of order").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_under_a_live_sessions_id_is_refused_and_the_session_goes_on() {
    let Some(mut rig) = rig().await else { return };
    let intruder = raw(&rig.server).await;
    let (stream, accepted) = rig.session().await;
    let answer = open_raw(&intruder, stream.session_id(), 2048).await;
    assert_eq!(answer["accepted"], false, "{answer}");
    assert_eq!(answer["refused"], "bad-request");
    let up = b"still one session".repeat(10_000);
    let down = b"and its answer".repeat(10_000);
    let (a, c) = tokio::join!(
        exchange(accepted, down.clone()),
        exchange(stream, up.clone())
    );
    assert!(a == up && c == down, "the session goes on untouched");
}

/// Anyone allowed to read `_INBOX.>` (ctl users are) sees an agent's
/// acceptance arrive at a ctl's inbox, and can have an agent accept
/// another session there (an open request of theirs, with that inbox as
/// its reply). Before, ctl took that second acceptance for a second agent
/// under the name and failed its session with "two agents answer"; the
/// acceptance now names its session, and one of another is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptance_of_another_session_at_our_inbox_is_no_name_clash() {
    let Some(mut rig) = rig().await else { return };
    let intruder = raw(&rig.server).await;
    let mut watching = intruder.subscribe("_INBOX.>").await.unwrap();
    intruder.flush().await.unwrap();
    let forging = tokio::spawn(async move {
        // One forged acceptance for each acceptance seen, a few at most.
        for _ in 0..4 {
            let Some(seen) = watching.next().await else {
                return;
            };
            if !String::from_utf8_lossy(&seen.payload).contains("\"accepted\":true") {
                continue;
            }
            let request = OpenRequest {
                session: SessionId::random().unwrap().to_string(),
                window: 2048,
                probe: false,
                instance: None,
            };
            intruder
                .publish_with_reply(
                    Subjects::default().open("labpc07"),
                    seen.subject.clone(),
                    serde_json::to_vec(&request).unwrap().into(),
                )
                .await
                .unwrap();
            intruder.flush().await.unwrap();
        }
    });
    let stream = rig.ctl.dial("labpc07").await.expect("dial");
    let ours = loop {
        let accepted = rig.incoming.recv().await.expect("accepted");
        if accepted.session_id() == stream.session_id() {
            break accepted;
        }
    };
    // Long enough for the forged acceptance to have come (the agent
    // answers at once), within the watch for a second agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up = b"one agent".repeat(10_000);
    let down = b"answers".repeat(10_000);
    let (a, c) = tokio::join!(exchange(ours, down.clone()), exchange(stream, up.clone()));
    assert!(a == up && c == down, "the session went on");
    forging.abort();
}

/// Anyone who may answer discovery can answer it without end: ctl keeps
/// each different answer once, so copies cost it nothing, and the agents
/// that answered are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_discovery_answer_are_kept_once() {
    let Some(server) = Nats::start() else {
        return;
    };
    let agent = server.carrier().await;
    let real = Announcement {
        name: "labpc07".to_owned(),
        fingerprint: format!("SHA256:{}", "x".repeat(42) + "A"),
        version: "0".to_owned(),
    };
    let _announcing = agent.announce(real.clone()).await.expect("announce");
    let intruder = raw(&server).await;
    let subjects = Subjects::default();
    let mut requests = intruder
        .subscribe(subjects.discover())
        .await
        .expect("subscribe");
    intruder.flush().await.expect("flush");
    let copy = Announcement {
        name: "labpc99".to_owned(),
        ..real.clone()
    };
    let payload = Bytes::from(serde_json::to_vec(&copy).unwrap());
    let flood = tokio::spawn(async move {
        let request = requests.next().await.expect("a discovery request");
        let inbox = request.reply.expect("a reply inbox");
        for _ in 0..5_000 {
            intruder
                .publish(inbox.clone(), payload.clone())
                .await
                .unwrap();
        }
        intruder.flush().await.unwrap();
    });
    let ctl = server.carrier().await;
    let found = ctl.discover(Duration::from_secs(2)).await.unwrap();
    flood.await.unwrap();
    assert_eq!(found, [real, copy]);
}
