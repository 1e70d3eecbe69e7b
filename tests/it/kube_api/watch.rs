//! Watch streams: newline-delimited JSON events over a chunked response, with
//! periodic bookmarks, `timeoutSeconds`, and the server's faults (pause holds events
//! back; `drop_watches`, `set_down` and the server's end cut the stream abruptly).

use super::Shared;
use super::status::ApiError;
use super::store::{Store, WatchFilter, WatchHandle, WatchStart, bookmark_line, event_line};
use axum::body::{Body, Bytes};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A watch request's parameters.
pub struct WatchRequest {
    pub filter: WatchFilter,
    /// `resourceVersion`; absent, empty or `"0"` means "from the current state".
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (streaming lists): the current state, then a bookmark
    /// marking its end, whatever the resourceVersion.
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

/// Opens a watch and returns the response body that streams it.
///
/// # Errors
/// 400 for a resourceVersion that is not a number.
pub fn start(shared: &Arc<Shared>, store: &mut Store, request: WatchRequest) -> Result<Body, ApiError> {
    let res = request.filter.res;
    let start = match request.resource_version.as_deref() {
        _ if request.send_initial_events => WatchStart::Current { end_bookmark: true },
        None | Some("") | Some("0") => WatchStart::Current { end_bookmark: false },
        Some(text) => WatchStart::After(
            text.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {text:?}")))?,
        ),
    };
    let handle = match store.subscribe(request.filter, start) {
        Ok(handle) => handle,
        // A watch from too old a version gets one ERROR event, then the stream ends.
        Err(expired) => {
            let line = event_line("ERROR", &expired.to_status());
            return Ok(Body::from(line));
        }
    };
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let deadline = request.timeout.map(|t| Instant::now() + t);
    let bookmarks = request.bookmarks;
    let shared = shared.clone();
    tokio::spawn(async move {
        let id = handle.id;
        follow(&shared, handle, body_tx, bookmarks, deadline, res).await;
        shared.store.lock().expect("store lock").unsubscribe(id);
    });
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(Body::from_stream(stream))
}

/// Copies the watch's events to the response body until the client goes away, the
/// timeout passes (a clean end) or the watch is cut (an abrupt end).
async fn follow(
    shared: &Arc<Shared>,
    mut handle: WatchHandle,
    body: mpsc::Sender<Result<Bytes, io::Error>>,
    bookmarks: bool,
    deadline: Option<Instant>,
    res: &'static super::resources::ResourceType,
) {
    let mut paused = shared.paused.subscribe();
    let mut next_bookmark = Instant::now() + shared.bookmark_interval();
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        if *paused.borrow_and_update() {
            // Paused: deliver nothing (events wait in the queue), but still notice a cut.
            tokio::select! {
                _ = paused.changed() => continue,
                _ = handle.cut.notified() => return cut(&body).await,
                _ = body.closed() => return,
            }
        }
        tokio::select! {
            biased;
            _ = handle.cut.notified() => return cut(&body).await,
            _ = body.closed() => return,
            _ = paused.changed() => continue,
            line = handle.events.recv() => match line {
                Some(line) => {
                    if body.send(Ok(Bytes::from(line))).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                // Queued behind the events already sent to this watch, so the bookmark
                // never runs ahead of them.
                let store = shared.store.lock().expect("store lock");
                let _ = handle.sender.send(bookmark_line(res, store.resource_version(), false));
                drop(store);
                next_bookmark = Instant::now() + shared.bookmark_interval();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far_future)), if deadline.is_some() => return,
        }
    }
}

/// Ends the body with an error, so the connection is dropped without the final chunk.
async fn cut(body: &mpsc::Sender<Result<Bytes, io::Error>>) {
    let _ = body.send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "watch cut by the test server"))).await;
}
