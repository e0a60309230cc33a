//! The repository's example `nats-server.conf` for real: TLS with a
//! certificate the test makes, per-agent users, and what they may do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use rexec_broker::{BrokerError, BrokerOptions, Carrier, Credentials};

use crate::util::{BrokerCa, Nats, exchange_and_check, secret_file, wait_until_async};

/// The example, made to run here (see [`Nats::example`]), and the CA file
/// that trusts its certificate.
fn example_server() -> Option<(Nats, PathBuf)> {
    let (server, ca) = Nats::start_example()?;
    Some((server, ca.ca))
}

fn options(server: &Nats, ca: &Path, user: &str, password: &str) -> BrokerOptions {
    let password_file = server.file(&format!("{user}.pass"));
    secret_file(&password_file, &format!("{password}\n"));
    let mut options = BrokerOptions::new([server.url.clone()]);
    options.ca_file = Some(ca.to_path_buf());
    options.credentials = Credentials::UserPassword {
        user: user.to_owned(),
        password_file,
    };
    options
}

/// Options for agent `name` on the example server, as the agent makes
/// them: its password from the example, its replies under its name.
fn agent_options(server: &Nats, ca: &Path, name: &str) -> BrokerOptions {
    let mut options = options(server, ca, name, &format!("change-me-{name}"));
    options.serves = Some(name.to_owned());
    options
}

/// A carrier on the example server as `user`, trusting `ca`.
async fn connect(
    server: &Nats,
    ca: &Path,
    user: &str,
    password: &str,
) -> Result<Carrier, BrokerError> {
    Carrier::connect(options(server, ca, user, password)).await
}

/// Agent `name` connected to the example server over TLS with its password
/// and serving its name, as the agent does: serving needs the reply to
/// its own check, which comes back under its name.
async fn serving(server: &Nats, ca: &Path, name: &str) -> (Carrier, rexec_broker::Listener) {
    let carrier = Carrier::connect(agent_options(server, ca, name))
        .await
        .expect("the agent connects over TLS with its password");
    let listener = carrier
        .listen(name)
        .await
        .expect("the agent serves its name");
    (carrier, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_confines_each_agent_to_its_own_name() {
    let Some((server, ca)) = example_server() else {
        return;
    };
    let (labpc07, mut listener) = serving(&server, &ca, "labpc07").await;
    let _announce = labpc07
        .announce(rexec_broker::Announcement {
            name: "labpc07".to_owned(),
            fingerprint: format!("SHA256:{}", "x".repeat(42) + "A"),
            version: "0.1.0".to_owned(),
        })
        .await
        .expect("announce");

    let error = labpc07.listen("labpc08").await.unwrap_err();
    assert_eq!(error, BrokerError::SubscribeRefused("labpc08".to_owned()));
    assert_eq!(
        error.to_string(),
        "the broker does not let us serve the name labpc08 (check the broker user's permissions)"
    );
    assert!(
        wait_until_async(Duration::from_secs(5), || labpc07
            .state()
            .permission_violations
            >= 1)
        .await,
        "the server's refusal is counted"
    );
    assert!(
        labpc07.state().connected,
        "a refused subscription does not cost the connection"
    );

    let admin = connect(&server, &ca, "admin", "change-me-admin")
        .await
        .expect("ctl user connects");
    assert_eq!(
        admin.dial("labpc08").await.unwrap_err(),
        BrokerError::Offline("labpc08".to_owned()),
        "nobody serves labpc08: the impostor's subscription was refused"
    );
    let found = admin.discover(Duration::from_millis(300)).await.unwrap();
    assert_eq!(found.len(), 1);
    exchange_and_check(listener.accept(), &admin, "labpc07").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reads_the_replies_to_its_own_requests_and_nobody_elses() {
    let Some((server, ca)) = example_server() else {
        return;
    };
    let (_labpc07, mut listener) = serving(&server, &ca, "labpc07").await;

    // Another agent's user, by hand, asks for every reply on the broker.
    let (refusals, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let snoop = async_nats::ConnectOptions::with_user_and_password(
        "labpc08".to_owned(),
        "change-me-labpc08".to_owned(),
    )
    .add_root_certificates(ca.clone())
    .require_tls(true)
    .event_callback(move |event| {
        let refusals = refusals.clone();
        async move {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = event {
                let _ = refusals.send(text);
            }
        }
    })
    .connect(server.url.as_str())
    .await
    .expect("labpc08 connects");
    let mut replies = snoop.subscribe("_INBOX.>").await.expect("sent");
    let refusal = tokio::time::timeout(Duration::from_secs(5), refused.recv())
        .await
        .expect("the server answers the subscription")
        .expect("a refusal");
    assert!(
        refusal
            .to_ascii_lowercase()
            .contains("permissions violation"),
        "{refusal}"
    );

    // ctl opens a session to labpc07; the answer goes to ctl's inbox, and
    // labpc08 sees none of it.
    let admin = connect(&server, &ca, "admin", "change-me-admin")
        .await
        .expect("ctl user connects");
    exchange_and_check(listener.accept(), &admin, "labpc07").await;
    let seen = tokio::time::timeout(Duration::from_millis(300), replies.next()).await;
    assert!(
        !matches!(seen, Ok(Some(_))),
        "labpc08 read a reply meant for ctl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_user_without_its_inbox_is_told_which_permission_is_missing() {
    // An agent user as an earlier example had it: `_INBOX.>`, not the
    // inbox under its name.
    let Some(server) = Nats::start_with(
        r#"authorization { users = [ { user: labpc07, password: pw, permissions: {
            subscribe: { allow: ["rexec.v1.agent.labpc07.open", "_INBOX.>"] }
            publish: { allow: ["rexec.v1.agent.labpc07.open"] }
            allow_responses: true } } ] }"#,
    ) else {
        return;
    };
    let password_file = server.file("labpc07.pass");
    secret_file(&password_file, "pw\n");
    let mut options = server.options();
    options.credentials = Credentials::UserPassword {
        user: "labpc07".to_owned(),
        password_file,
    };
    options.serves = Some("labpc07".to_owned());
    let labpc07 = Carrier::connect(options).await.expect("connects");
    let error = labpc07.listen("labpc07").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the broker does not let us read the replies to our own requests under \
         rexec.v1.agent.labpc07.inbox (its user needs to subscribe to rexec.v1.agent.labpc07.inbox.>)"
    );
}

/// A ctl user the broker does not let receive replies, send opens or read
/// sessions is told which, at once. Before, a dial waited for the whole
/// open timeout and said the agent did not answer, and discovery found
/// nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctl_user_the_broker_refuses_a_subject_is_told_which() {
    let Some(server) = Nats::start_with(
        r#"authorization { users = [
            { user: agent, password: pw }
            { user: noinbox, password: pw, permissions: {
                subscribe: { allow: ["rexec.v1.agent.*.session.*.from-agent"] } } }
            { user: noopen, password: pw, permissions: {
                publish: { deny: ["rexec.v1.agent.*.open"] } } }
            { user: nosession, password: pw, permissions: {
                subscribe: { allow: ["_INBOX.>"] } } }
        ] }"#,
    ) else {
        return;
    };
    let password_file = server.file("pw.pass");
    secret_file(&password_file, "pw\n");
    let user = |name: &str| {
        let mut options = server.options();
        options.credentials = Credentials::UserPassword {
            user: name.to_owned(),
            password_file: password_file.clone(),
        };
        options
    };
    let agent = Carrier::connect(user("agent")).await.expect("agent");
    let _listener = agent.listen("labpc07").await.expect("listen");
    let _announcing = agent
        .announce(rexec_broker::Announcement {
            name: "labpc07".to_owned(),
            fingerprint: format!("SHA256:{}", "x".repeat(42) + "A"),
            version: "0".to_owned(),
        })
        .await
        .expect("announce");
    let inbox = BrokerError::InboxRefused("_INBOX".to_owned());
    for (name, dialled) in [
        ("noinbox", inbox.clone()),
        (
            "noopen",
            BrokerError::Broker(
                "the broker does not let us open sessions to labpc07: its user needs to publish to rexec.v1.agent.labpc07.open"
                    .to_owned(),
            ),
        ),
        (
            "nosession",
            BrokerError::Broker(
                "the broker does not let us read sessions from labpc07: its user needs to subscribe to rexec.v1.agent.labpc07.session.*.from-agent"
                    .to_owned(),
            ),
        ),
    ] {
        let ctl = Carrier::connect(user(name)).await.expect("ctl connects");
        let started = Instant::now();
        // Twice: the second dial shares what the first one made.
        for _ in 0..2 {
            // A refusal that comes after the agent's answer ends the
            // session instead.
            let error = match ctl.dial("labpc07").await {
                Err(error) => error,
                Ok(mut stream) => {
                    let mut buf = [0u8; 8];
                    let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buf);
                    let error = tokio::time::timeout(Duration::from_secs(5), read)
                        .await
                        .expect("the session ends")
                        .expect_err("the session fails");
                    BrokerError::from_io(&error).cloned().expect("a carrier error")
                }
            };
            assert_eq!(error, dialled, "{name}");
            assert_eq!(error.kind(), "broker");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: told after {:?}, the open timeout is 10 s",
            started.elapsed()
        );
        if name == "noinbox" {
            assert_eq!(
                ctl.discover(Duration::from_secs(1)).await,
                Err(inbox.clone())
            );
            assert_eq!(
                inbox.to_string(),
                "the broker does not let us read the replies to our own requests under _INBOX (its user needs to subscribe to _INBOX.>)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_broker_is_one_clear_line() {
    let Some((server, ca)) = example_server() else {
        return;
    };
    let error = connect(&server, &ca, "labpc07", "wrong").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("the broker at {} refused our credentials", server.url)
    );

    let other_ca = tempfile::tempdir().unwrap();
    let untrusted = BrokerCa::make(other_ca.path(), "other").ca;
    let error = connect(&server, &untrusted, "labpc07", "change-me-labpc07")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "TLS with the broker at {} failed: its certificate is not signed by the CA we were given",
            server.url
        )
    );

    // An agent retries for ever instead of failing, and says why it is not
    // connected.
    let mut retrying = options(&server, &ca, "labpc07", "wrong");
    retrying.retry_forever = true;
    let agent = Carrier::connect(retrying).await.expect("returns at once");
    assert!(
        wait_until_async(Duration::from_secs(10), || agent
            .state()
            .last_error
            .is_some())
        .await,
        "the refusal is reported"
    );
    let state = agent.state();
    assert!(!state.connected);
    assert_eq!(
        state.last_error,
        Some(format!(
            "the broker at {} refused our credentials",
            server.url
        ))
    );

    // A certificate refused on a retry reaches the library as plain I/O;
    // the agent still says it is the certificate, not the network.
    let mut retrying = options(&server, &untrusted, "labpc07", "change-me-labpc07");
    retrying.retry_forever = true;
    let agent = Carrier::connect(retrying).await.expect("returns at once");
    let said = format!(
        "TLS with the broker at {} failed: its certificate is not signed by the CA we were given",
        server.url
    );
    assert!(
        wait_until_async(Duration::from_secs(10), || agent.state().last_error
            == Some(said.clone()))
        .await,
        "{:?}",
        agent.state().last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_files_others_can_read_are_refused() {
    let Some(server) = Nats::start() else {
        return;
    };
    let path = server.file("token");
    std::fs::write(&path, "s3cret\n").unwrap();
    let mut options = server.options();
    options.credentials = Credentials::TokenFile(path.clone());
    let error = Carrier::connect(options).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("permissions 0644 for broker token file"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_file_is_accepted() {
    let Some(server) = Nats::start_with("authorization { token: \"s3cret\" }") else {
        return;
    };
    let path = server.file("token");
    secret_file(&path, "s3cret\n");
    let mut options = server.options();
    options.credentials = Credentials::TokenFile(path);
    Carrier::connect(options).await.expect("token accepted");
    let mut without = server.options();
    without.credentials = Credentials::None;
    assert!(Carrier::connect(without).await.is_err());
}

/// Run by the next test in a child process whose environment points the
/// system root store at an empty directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by tls_to_the_broker_works_without_system_root_certificates"]
async fn child_connects_over_tls() {
    let url = std::env::var("REXEC_TEST_BROKER_URL").expect("url");
    let ca = std::env::var("REXEC_TEST_BROKER_CA").expect("ca");
    let password_file = std::env::var("REXEC_TEST_BROKER_PASSWORD").expect("password file");
    let mut options = BrokerOptions::new([url]);
    options.ca_file = Some(ca.into());
    options.credentials = Credentials::UserPassword {
        user: "admin".to_owned(),
        password_file: password_file.into(),
    };
    let carrier = Carrier::connect(options).await.expect("connects over TLS");
    assert!(carrier.state().connected);
}

#[test]
fn tls_to_the_broker_works_without_system_root_certificates() {
    let Some((server, ca)) = example_server() else {
        return;
    };
    let password_file = server.file("admin.pass");
    secret_file(&password_file, "change-me-admin\n");
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "config::child_connects_over_tls",
            "--ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_DIR", empty.path())
        .env_remove("SSL_CERT_FILE")
        .env("REXEC_TEST_BROKER_URL", &server.url)
        .env("REXEC_TEST_BROKER_CA", &ca)
        .env("REXEC_TEST_BROKER_PASSWORD", &password_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_pinned_by_its_certificates_fingerprint_needs_no_ca() {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let Some((server, ca)) = example_server() else {
        return;
    };
    let pin_of = |path: &Path| {
        let der = CertificateDer::from_pem_file(path).unwrap();
        rexec_broker::CertFingerprint::of(&der)
    };
    let broker_pin = pin_of(&server.dir.path().join("broker.crt"));
    // What users paste: openssl's upper-case, colon-paired form.
    let hex = broker_pin.to_string()[7..].to_uppercase();
    let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
    let openssl = format!("sha256:{}", pairs.join(":"));
    assert_eq!(openssl.parse(), Ok(broker_pin));

    let mut pinned = agent_options(&server, &ca, "labpc07");
    pinned.ca_file = None;
    pinned.fingerprint = Some(broker_pin);
    let carrier = Carrier::connect(pinned.clone())
        .await
        .expect("the pinned broker is trusted");
    let _listener = carrier.listen("labpc07").await.expect("serves its name");

    // Another certificate (the CA's own) is not the broker's.
    pinned.fingerprint = Some(pin_of(&ca));
    let error = Carrier::connect(pinned.clone()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "TLS with the broker at {} failed: its certificate does not match the fingerprint we pin",
            server.url
        )
    );

    pinned.ca_file = Some(ca.clone());
    let error = pinned.check().unwrap_err();
    assert_eq!(
        error.to_string(),
        "give either a CA file or a fingerprint to trust the broker by, not both"
    );
}
