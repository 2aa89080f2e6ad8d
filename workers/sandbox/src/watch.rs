//! Watches, as the API server serves them: `?watch=true` on a list path streams
//! newline-delimited JSON `WatchEvent`s (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`).
//!
//! Every change to the store (each one issues a resource version) is kept in a bounded history
//! (a ring of the most recent [`DEFAULT_HISTORY`] changes, see [`crate::Sandbox::set_watch_history`])
//! and sent on a tokio broadcast channel. A watch subscribes under the store's lock, so it
//! misses nothing between its starting point and the live changes:
//!
//! - `resourceVersion` unset or `"0"` (or `sendInitialEvents=true`): synthetic `ADDED` events
//!   for the current state, then changes after it;
//! - `resourceVersion=N`: the changes after `N` from the history, then live ones; an `N` older
//!   than the history answers `200` with one `ERROR` event carrying a `410 Expired` `Status`,
//!   as a real server does (kube-runtime's watcher relists on it);
//! - label and field selectors filter events the way the API server does: an object that stops
//!   matching is sent as `DELETED`, one that starts matching as `ADDED`;
//! - `allowWatchBookmarks=true`: a `BOOKMARK` with the latest resource version every
//!   [`BOOKMARK_INTERVAL`] and just before the watch ends;
//! - `timeoutSeconds` ends the stream (default [`DEFAULT_TIMEOUT`]);
//! - a watcher that falls more than [`BROADCAST_CAPACITY`] changes behind (a client reading too
//!   slowly) gets a `410 Expired` `ERROR` and the stream ends: memory stays bounded and the
//!   store never waits for a watcher.
//!
//! Asked for as a `Table` (kubectl's `get --watch`), each event's object is a one-row table.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::store::{ListOptions, ObjectKey, Target, TypeKey};

/// How many changes the history keeps by default: a watch may resume from any resource version
/// at most this many changes old.
pub const DEFAULT_HISTORY: usize = 1000;
/// How many changes a watcher may fall behind the store before it is closed with `410`.
pub const BROADCAST_CAPACITY: usize = 1024;
/// How often a watch that asked for bookmarks gets one while nothing else is sent.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);
/// How long a watch without `timeoutSeconds` lasts (a real server picks 30–60 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Encoded events buffered for one slow client before the watch waits for it.
const STREAM_BUFFER: usize = 16;

/// What a change did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change to the store: it issued resource version `rv`.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub type_key: TypeKey,
    pub key: ObjectKey,
    pub kind: ChangeKind,
    /// The object after the change; for a delete, the object as it was, carrying the
    /// deletion's resource version.
    pub object: Value,
    /// The object before a modification (to tell when it stops or starts matching a selector).
    pub previous: Option<Value>,
}

/// What the broadcast channel carries.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    Change(Arc<Change>),
    /// The server is shutting down: every open watch ends.
    Close,
}

/// The history of recent changes and the channel live changes go out on.
#[derive(Debug)]
pub(crate) struct Hub {
    history: VecDeque<Arc<Change>>,
    capacity: usize,
    /// Every change with a resource version above this one is in `history`.
    kept_after: u64,
    sender: broadcast::Sender<Signal>,
}

impl Hub {
    pub fn new() -> Self {
        Self {
            history: VecDeque::new(),
            capacity: DEFAULT_HISTORY,
            kept_after: 0,
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    /// Keeps at most `capacity` changes (at least one), forgetting the oldest at once.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.trim();
    }

    pub fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(Arc::clone(&change));
        self.trim();
        // No receivers is fine: nobody watches.
        let _ = self.sender.send(Signal::Change(change));
    }

    pub fn close_all(&self) {
        let _ = self.sender.send(Signal::Close);
    }

    fn trim(&mut self) {
        while self.history.len() > self.capacity {
            if let Some(oldest) = self.history.pop_front() {
                self.kept_after = oldest.rv;
            }
        }
    }

    /// Subscribes to live changes and answers what comes before them. Called under the
    /// store's lock, so nothing falls between the backlog and the live changes.
    pub fn subscribe(
        &self,
        request: &WatchRequest,
        current: u64,
    ) -> (Backlog, broadcast::Receiver<Signal>) {
        let receiver = self.sender.subscribe();
        let backlog = match request.from {
            _ if request.initial_state => Backlog::State,
            None => Backlog::Changes(Vec::new()),
            Some(from) if from < self.kept_after => Backlog::Expired(format!(
                "too old resource version: {from} ({})",
                self.kept_after + 1
            )),
            Some(from) => Backlog::Changes(
                self.history
                    .iter()
                    .filter(|c| c.rv > from && c.rv <= current)
                    .cloned()
                    .collect(),
            ),
        };
        (backlog, receiver)
    }
}

/// What a new watch is sent before live changes.
pub(crate) enum Backlog {
    /// Synthetic `ADDED` events for the current state (filled in by the store).
    State,
    /// The changes after the requested resource version.
    Changes(Vec<Arc<Change>>),
    /// The requested resource version is older than the history: the message.
    Expired(String),
}

/// A watch, as asked for in the query.
pub(crate) struct WatchRequest {
    pub target: Target,
    pub options: ListOptions,
    /// Start with synthetic `ADDED` events for the current state (resourceVersion unset or
    /// `0`, unless `sendInitialEvents=false`; or `sendInitialEvents=true`).
    pub initial_state: bool,
    /// Changes after this resource version (the current one when `None`), when there is no
    /// initial state.
    pub from: Option<u64>,
    /// `sendInitialEvents=true`: after the state, a bookmark marking its end.
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub table: bool,
}

impl WatchRequest {
    /// Reads the watch parameters of a query (the list parameters are read by the caller).
    pub fn new(
        target: Target,
        options: ListOptions,
        query: &HashMap<String, String>,
        table: bool,
    ) -> Result<Self, ApiError> {
        let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
        let send_initial_events = flag("sendInitialEvents");
        let from = match query.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid resource version {rv:?}: give one from a list or an event"
                ))
            })?),
        };
        let initial_state = send_initial_events
            || (from.is_none() && query.get("sendInitialEvents").is_none_or(|v| v != "false"));
        let timeout = match query.get("timeoutSeconds") {
            None => DEFAULT_TIMEOUT,
            Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {t:?}: give whole seconds"))
            })?),
        };
        Ok(Self {
            target,
            options,
            initial_state,
            from,
            send_initial_events,
            bookmarks: flag("allowWatchBookmarks"),
            timeout,
            table,
        })
    }
}

/// A subscribed watch, ready to stream.
pub(crate) struct Subscription {
    pub request: WatchRequest,
    /// Events to send first, already encoded as `(type, object)`.
    pub backlog: Result<Vec<(&'static str, Value)>, String>,
    pub receiver: broadcast::Receiver<Signal>,
    /// The resource version the backlog brings the watcher to.
    pub position: u64,
}

/// The event `change` makes for a watcher of `target` with `options`, if any.
pub(crate) fn event_for(
    change: &Change,
    target: &Target,
    options: &ListOptions,
) -> Option<(&'static str, Value)> {
    if change.type_key != target.type_key()
        || target
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != change.key.0)
    {
        return None;
    }
    let selects = |object: &Value| options.selects(&change.key, object);
    let kind = match change.kind {
        ChangeKind::Added => selects(&change.object).then_some("ADDED")?,
        ChangeKind::Deleted => selects(&change.object).then_some("DELETED")?,
        ChangeKind::Modified => {
            let was = change.previous.as_ref().is_some_and(selects);
            match (was, selects(&change.object)) {
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, true) => "ADDED",
                (false, false) => return None,
            }
        }
    };
    Some((kind, target.render(&change.object)))
}

/// Streams a subscribed watch: status 200 and one JSON event per line.
pub(crate) fn stream(subscription: Subscription) -> Response {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    tokio::spawn(run(subscription, sender));
    let body = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|line| line.map(Ok::<_, Infallible>))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

struct Streamer {
    sender: mpsc::Sender<Bytes>,
    request: WatchRequest,
    position: u64,
}

impl Streamer {
    /// Sends one event; `false` once the client has gone.
    async fn send(&self, kind: &str, object: Value) -> bool {
        let object = if self.request.table && matches!(kind, "ADDED" | "MODIFIED" | "DELETED") {
            crate::http::table(
                json!({"metadata": {"resourceVersion": self.position.to_string()}, "items": [object]}),
            )
        } else {
            object
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
            .expect("JSON values serialize");
        line.push(b'\n');
        self.sender.send(Bytes::from(line)).await.is_ok()
    }

    async fn bookmark(&self, initial_events_end: bool) -> bool {
        let target = &self.request.target;
        let mut metadata = json!({"resourceVersion": self.position.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(
            "BOOKMARK",
            json!({"apiVersion": target.api_version(), "kind": target.rt.kind, "metadata": metadata}),
        )
        .await
    }

    async fn expired(&self, message: String) {
        let status = ApiError::expired(message).status();
        let _ = self.send("ERROR", status).await;
    }

    /// Handles one signal; `false` when the watch must end.
    async fn on_signal(&mut self, signal: Result<Signal, broadcast::error::RecvError>) -> bool {
        match signal {
            Ok(Signal::Change(change)) => {
                if change.rv <= self.position {
                    // Already covered by the backlog.
                    return true;
                }
                self.position = change.rv;
                match event_for(&change, &self.request.target, &self.request.options) {
                    Some((kind, object)) => self.send(kind, object).await,
                    None => true,
                }
            }
            Ok(Signal::Close) | Err(broadcast::error::RecvError::Closed) => false,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.expired(format!(
                    "the watch fell {missed} changes behind the cluster (the client reads too \
                     slowly); list again and watch from the list's resourceVersion"
                ))
                .await;
                false
            }
        }
    }
}

async fn run(subscription: Subscription, sender: mpsc::Sender<Bytes>) {
    let Subscription {
        request,
        backlog,
        mut receiver,
        position,
    } = subscription;
    let deadline = Instant::now() + request.timeout;
    let mut streamer = Streamer {
        sender,
        request,
        position,
    };
    let backlog = match backlog {
        Ok(backlog) => backlog,
        Err(message) => return streamer.expired(message).await,
    };
    for (kind, object) in backlog {
        if !streamer.send(kind, object).await {
            return;
        }
    }
    if streamer.request.send_initial_events && !streamer.bookmark(true).await {
        return;
    }
    let mut next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    loop {
        tokio::select! {
            signal = receiver.recv() => {
                if !streamer.on_signal(signal).await {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep_until(next_bookmark), if streamer.request.bookmarks => {
                if !drain(&mut streamer, &mut receiver).await || !streamer.bookmark(false).await {
                    return;
                }
                next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
            }
            () = streamer.sender.closed() => return,
        }
    }
    if streamer.request.bookmarks && drain(&mut streamer, &mut receiver).await {
        streamer.bookmark(false).await;
    }
}

/// Handles every change already queued, so a bookmark's resource version covers them all.
async fn drain(streamer: &mut Streamer, receiver: &mut broadcast::Receiver<Signal>) -> bool {
    loop {
        match receiver.try_recv() {
            Ok(signal) => {
                if !streamer.on_signal(Ok(signal)).await {
                    return false;
                }
            }
            Err(broadcast::error::TryRecvError::Empty) => return true,
            Err(broadcast::error::TryRecvError::Closed) => return false,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                return streamer
                    .on_signal(Err(broadcast::error::RecvError::Lagged(missed)))
                    .await;
            }
        }
    }
}
