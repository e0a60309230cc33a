//! Whether a stream's peer is still there, asked of the broker: the rule
//! that stands in for TCP's reset and zero-window probes.
//!
//! A side that has data waiting for credit and has heard nothing from its
//! peer for a while sends its heartbeat as a NATS request, with a reply
//! inbox of its own. A peer whose process died has lost its connection to
//! the broker, and with it its subscription: the server answers "no
//! responders" at once, and the stream ends (`lost`) as a TCP connection
//! ends on the reset a dead process's kernel sends. A peer that is there
//! but not reading (a ctl stopped with SIGSTOP) is still subscribed: the
//! heartbeat reaches it, nobody answers, and the stream is held, as TCP
//! holds a zero window whose probes are acknowledged. The peer itself sees
//! only a heartbeat (it ignores reply subjects).

use async_nats::{Client, StatusCode, Subject, Subscriber};
use futures_util::{FutureExt, StreamExt};

use crate::error::BrokerError;

/// What the broker said about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Still subscribed.
    There,
    /// No longer subscribed: its connection to the broker is gone.
    Gone,
    /// We cannot ask (our reply inbox was refused); we never ask again.
    Unknown,
}

/// One stream's reply inbox for its questions, made at the first one.
#[derive(Debug, Default)]
pub(crate) struct PeerCheck {
    inbox: Option<(Subject, Subscriber)>,
    unusable: bool,
}

fn no_responders(message: &async_nats::Message) -> bool {
    message.status == Some(StatusCode::NO_RESPONDERS)
}

impl PeerCheck {
    /// Whether asking is possible at all.
    pub(crate) fn usable(&self) -> bool {
        !self.unusable
    }

    /// The reply subject for the next heartbeat, subscribed first so that
    /// the server's answer has somewhere to go.
    pub(crate) async fn reply_subject(&mut self, client: &Client) -> Option<Subject> {
        if self.unusable {
            return None;
        }
        if self.inbox.is_none() {
            let inbox = Subject::from(client.new_inbox());
            match client.subscribe(inbox.clone()).await {
                Ok(subscriber) => self.inbox = Some((inbox, subscriber)),
                Err(_) => {
                    self.unusable = true;
                    return None;
                }
            }
        }
        self.inbox.as_ref().map(|(subject, _)| subject.clone())
    }

    /// After the heartbeat went out with our reply subject: a round trip
    /// to the server (which answers in order, so its "no responders" for
    /// the heartbeat, if any, has arrived when the round trip is done),
    /// then the answer.
    ///
    /// # Errors
    /// [`BrokerError::Lost`] when the connection fails meanwhile.
    pub(crate) async fn answer(&mut self, client: &Client) -> Result<Answer, BrokerError> {
        let Some((_, subscriber)) = self.inbox.as_mut() else {
            return Ok(Answer::Unknown);
        };
        client
            .flush()
            .await
            .map_err(|_| BrokerError::Lost(crate::error::LostReason::BrokerDisconnected))?;
        while let Some(Some(message)) = subscriber.next().now_or_never() {
            if no_responders(&message) {
                return Ok(Answer::Gone);
            }
        }
        Ok(Answer::There)
    }

    /// Resolves when the server says, late, that the peer is gone; never
    /// while we have not asked.
    pub(crate) async fn gone(&mut self) {
        if let Some((_, subscriber)) = self.inbox.as_mut() {
            while let Some(message) = subscriber.next().await {
                if no_responders(&message) {
                    return;
                }
            }
        }
        std::future::pending::<()>().await;
    }

    /// Gives the inbox back to the server.
    pub(crate) async fn close(&mut self) {
        if let Some((_, mut subscriber)) = self.inbox.take() {
            let _ = subscriber.unsubscribe().await;
        }
    }
}
