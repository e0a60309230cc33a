//! Where the answers to our own requests (open requests, probes) come
//! back: one wildcard subscription on an inbox of ours for all of them,
//! made at the first request, and each request's answers handed to it by
//! the last token of their subject. The client library muxes its requests
//! the same way, but keeps only the first answer; we keep every one, since
//! two agents under one name both answer, and that second answer is how
//! we know. One subscription, not one per request, so that a fan-out to
//! thousands of agents does not make the broker add and remove a
//! subscription twice per host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::{Client, Message};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::BrokerError;

/// Answers kept for one request beyond those read: more are dropped (a
/// request has one answer per agent that serves its name, and only the
/// second matters).
const ANSWERS_QUEUED: usize = 4;

type Waiting = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

/// The answers to our requests, for a connection.
pub(crate) struct Replies {
    client: Client,
    current: tokio::sync::Mutex<Option<Arc<Mux>>>,
}

/// One wildcard subscription and who waits on it.
struct Mux {
    /// Our inbox for this subscription (`PREFIX.NUID`); a request's reply
    /// subject is this and a token.
    inbox: String,
    waiting: Waiting,
    next: AtomicU64,
    task: JoinHandle<()>,
}

impl Drop for Mux {
    fn drop(&mut self) {
        // Dropping the subscriber unsubscribes.
        self.task.abort();
    }
}

/// One request's reply subject and its answers; forgotten when dropped.
pub(crate) struct ReplyWait {
    /// The reply subject to send the request with.
    pub subject: String,
    /// What the broker calls our subscription, should it refuse it.
    pub subscription: String,
    answers: mpsc::Receiver<Message>,
    token: u64,
    mux: Arc<Mux>,
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        lock(&self.mux.waiting).remove(&self.token);
    }
}

impl ReplyWait {
    /// The next answer (`None` only if the subscription ended).
    pub async fn next(&mut self) -> Option<Message> {
        self.answers.recv().await
    }

    /// An answer already waiting, if any.
    pub fn try_next(&mut self) -> Option<Message> {
        self.answers.try_recv().ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Replies {
    pub fn new(client: Client) -> Replies {
        Replies {
            client,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A reply subject of our own, and every answer sent to it.
    pub async fn wait(&self) -> Result<ReplyWait, BrokerError> {
        let mux = {
            let mut current = self.current.lock().await;
            match &*current {
                Some(mux) => mux.clone(),
                None => {
                    let mux = Arc::new(Mux::start(&self.client).await?);
                    *current = Some(mux.clone());
                    mux
                }
            }
        };
        let token = mux.next.fetch_add(1, Ordering::Relaxed);
        let (tx, answers) = mpsc::channel(ANSWERS_QUEUED);
        lock(&mux.waiting).insert(token, tx);
        Ok(ReplyWait {
            subject: format!("{}.{token}", mux.inbox),
            subscription: format!("{}.*", mux.inbox),
            answers,
            token,
            mux,
        })
    }

    /// Forgets the subscription of `wait` (the broker refused it), so
    /// that the next request makes a new one: the broker's permissions
    /// may have changed by then.
    pub async fn refused(&self, wait: &ReplyWait) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|mux| Arc::ptr_eq(mux, &wait.mux))
        {
            *current = None;
        }
    }
}

impl Mux {
    async fn start(client: &Client) -> Result<Mux, BrokerError> {
        let inbox = client.new_inbox();
        let mut subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|_| BrokerError::Broker("subscribing on the broker failed".to_owned()))?;
        let waiting = Waiting::default();
        let routes = waiting.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let token = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|token| token.parse::<u64>().ok());
                let Some(token) = token else { continue };
                if let Some(tx) = lock(&routes).get(&token) {
                    let _ = tx.try_send(message);
                }
            }
        });
        Ok(Mux {
            inbox,
            waiting,
            next: AtomicU64::new(0),
            task,
        })
    }
}
