//! The removal feed: one `LISTEN` connection per catalog, reconnected with back-off and
//! pinged, that hands removed paths to the receivers of `watch_removed`.

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::{db, PgCatalog};
use crate::catalog::CatalogError;

/// The notification channel of removed paths.
pub(super) const REMOVED_CHANNEL: &str = "sluice_removed";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
pub(super) const NOTIFY_MAX: usize = 7_999;

/// The removal feed pings its connection this often, and gives up on it after the timeout.
const FEED_PING: Duration = Duration::from_secs(15);
const FEED_PING_TIMEOUT: Duration = Duration::from_secs(10);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long `watch_removed` waits for the feed's first `LISTEN`.
const FEED_READY_WAIT: Duration = Duration::from_secs(10);

pub(super) fn watch_removed(catalog: &PgCatalog) -> Option<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    lock(&catalog.feed.watchers).push(tx);
    let start = {
        let mut s = lock(&catalog.feed.state);
        !std::mem::replace(&mut s.started, true)
    };
    if start {
        match catalog.rt.handle() {
            Ok(h) => {
                h.spawn(feed_loop(catalog.pg.clone(), catalog.feed.clone()));
            }
            Err(_) => return None,
        }
    }
    // "From now on": removals after this returns reach `rx` once the feed listens.
    let s = lock(&catalog.feed.state);
    let (s, wait) = catalog
        .feed
        .changed
        .wait_timeout_while(s, FEED_READY_WAIT, |s| !s.listening)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if wait.timed_out() && !s.listening {
        tracing::warn!("catalog removal feed not listening yet; it keeps trying");
    }
    Some(rx)
}

/// The removal feed: the receivers of `watch_removed` and the state of its connection.
#[derive(Default)]
pub(super) struct Feed {
    watchers: Mutex<Vec<mpsc::Sender<String>>>,
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    started: bool,
    listening: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Feed {
    fn set_listening(&self, on: bool) {
        lock(&self.state).listening = on;
        self.changed.notify_all();
    }

    /// Hand `path` to every watcher; forget those that hung up.
    fn publish(&self, path: &str) {
        lock(&self.watchers).retain(|w| w.send(path.to_owned()).is_ok());
    }
}

/// Keep one connection `LISTEN`ing, reconnecting with back-off, for the catalog's lifetime
/// (the runtime's shutdown ends it). Removals while it reconnects are missed.
async fn feed_loop(pg: tokio_postgres::Config, feed: Arc<Feed>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let e = listen(&pg, &feed).await;
        feed.set_listening(false);
        match e {
            // It listened, so the next attempt starts quickly.
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "catalog removal feed: connection lost"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
    }
}

/// One connection of the feed: `LISTEN`, then pass notifications on until it fails.
async fn listen(pg: &tokio_postgres::Config, feed: &Arc<Feed>) -> Result<(), CatalogError> {
    let (client, mut conn) = pg.connect(NoTls).await.map_err(db)?;
    let to = feed.clone();
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => to.publish(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db(e)),
                None => return Ok(()),
            }
        }
    });
    let ready = client
        .batch_execute(&format!("LISTEN {REMOVED_CHANNEL}"))
        .await
        .map_err(db);
    if let Err(e) = ready {
        driver.abort();
        return Err(e);
    }
    feed.set_listening(true);
    let mut ping = tokio::time::interval(FEED_PING);
    ping.reset();
    let out = loop {
        tokio::select! {
            ended = &mut driver => {
                break match ended {
                    Ok(r) => r,
                    Err(e) => Err(CatalogError::Backend(format!("feed task: {e}"))),
                };
            }
            _ = ping.tick() => {
                match tokio::time::timeout(FEED_PING_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Err(db(e)),
                    Err(_) => break Err(CatalogError::Backend("feed ping timed out".into())),
                }
            }
        }
    };
    driver.abort();
    out
}
