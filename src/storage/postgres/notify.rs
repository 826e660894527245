//! Wakes the watchers of every replica. After a commit that appended
//! events, this replica wakes its own watchers at once and sends
//! `NOTIFY runstore_events`; every replica LISTENs on a connection of its
//! own. The NOTIFY is sent on its own, after the commit, coalesced (at most
//! one per [`NOTIFY_EVERY`]): a NOTIFY inside the write transactions would
//! make their commits queue on PostgreSQL's notification lock.
//! Correctness never rests on it: watchers also poll slowly.

use std::{future::poll_fn, sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_postgres::AsyncMessage;

use super::{
    PostgresSettings,
    pool::{Connections, PoolBuildError, connect_config},
};

const LISTEN: &str = "LISTEN runstore_events";
const NOTIFY: &str = "NOTIFY runstore_events";
/// Wait before listening again after the connection failed.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);
/// At most one NOTIFY per this long: under load every write would otherwise
/// be followed by one, each a transaction of its own that every replica's
/// listener must receive. Other replicas' watchers learn of new events at
/// most this much later.
const NOTIFY_EVERY: Duration = Duration::from_millis(10);

/// Dropping it stops both tasks.
pub struct EventNotifier {
    signal: watch::Sender<u64>,
    poke: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl EventNotifier {
    pub fn start(
        settings: &PostgresSettings,
        connections: Arc<Connections>,
    ) -> Result<Self, PoolBuildError> {
        let (signal, _) = watch::channel(0);
        let poke = Arc::new(Notify::new());
        let (config, tls) = connect_config(settings)?;
        let sender = tokio::spawn(send_notifies(connections, Arc::clone(&poke)));
        let listener = tokio::spawn(listen(config, tls, signal.clone()));
        Ok(Self {
            signal,
            poke,
            tasks: vec![sender, listener],
        })
    }

    /// After a commit that appended events.
    pub fn committed(&self) {
        bump(&self.signal);
        self.poke.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }
}

impl Drop for EventNotifier {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn bump(signal: &watch::Sender<u64>) {
    signal.send_modify(|n| *n = n.wrapping_add(1));
}

async fn send_notifies(connections: Arc<Connections>, poke: Arc<Notify>) {
    loop {
        poke.notified().await;
        // A NOTIFY lost to an outage costs the other replicas' watchers one
        // slow poll, nothing more.
        match connections.get().await {
            Ok(conn) => {
                if let Err(err) = conn.batch_execute(NOTIFY).await {
                    tracing::debug!(error = %err, "NOTIFY failed");
                }
            }
            Err(err) => tracing::debug!(error = %err, "no connection for NOTIFY"),
        }
        // Pokes meanwhile leave one permit: one NOTIFY covers them all.
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    signal: watch::Sender<u64>,
) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                // The connection's messages must be polled for the LISTEN
                // to be sent, so both run together.
                let messages = async {
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => bump(&signal),
                            Ok(_) => {}
                            Err(err) => return err.to_string(),
                        }
                    }
                    "connection closed".to_owned()
                };
                let mut messages = std::pin::pin!(messages);
                let reason = tokio::select! {
                    listened = client.batch_execute(LISTEN) => {
                        match listened {
                            // Anything committed while not listening is
                            // found now.
                            Ok(()) => bump(&signal),
                            Err(err) => tracing::debug!(error = %err, "LISTEN failed"),
                        }
                        messages.await
                    }
                    reason = &mut messages => reason,
                };
                tracing::debug!(%reason, "event listener disconnected");
            }
            Err(err) => tracing::debug!(error = %err, "event listener cannot connect"),
        }
        tokio::time::sleep(RELISTEN_DELAY).await;
    }
}
