//! Identical concurrent misses share one upstream call.
//!
//! When a launch or a retry storm sends N requests with the same exact key at once,
//! the first to miss becomes the flight's leader and walks the chain; the others follow:
//! they wait for the leader's answer and serve it, tagged `cache:coalesced`. The
//! leader's upstream call is detached from its client (`ladder::walk_chain` runs it in a
//! task of its own, and a flight's stream is read to its end by one, `writer.rs`): when
//! the leader's client goes away while followers wait, only its own response is dropped
//! and the followers still get the answer. Without followers the call is cancelled, as
//! any request's is (a "stop" button must not cost a whole answer). The flight ends when the leader's answer is stored (the followers get the
//! entry) or when the leader ends without one: its chain failed or was refused, its
//! answer may not be stored, or its stream broke. Then the flight is abandoned and each
//! follower looks the request up again, so one of them leads the next flight. A
//! follower never fails because its leader did.
//!
//! Only requests the cache may serve follow (`no-cache` goes upstream), and only
//! requests whose answer may be stored lead (`no-store` does not).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::entry::StoredEntry;

/// Where a flight is.
#[derive(Clone)]
enum Flight {
    Running,
    Answered(Arc<StoredEntry>),
    Abandoned,
}

/// The flights in the air, by exact key.
#[derive(Default)]
pub struct Flights {
    running: Mutex<HashMap<[u8; 32], watch::Sender<Flight>>>,
}

/// A request's part in the flight of its key.
pub enum Joined {
    /// No flight was running: this request leads one.
    Leader(Leader),
    /// Another request leads: wait for its answer.
    Follower(Follower),
}

/// Held by the request whose answer the followers wait for; dropping it without an
/// answer abandons the flight.
pub struct Leader {
    key: [u8; 32],
    flights: Arc<Flights>,
    sender: watch::Sender<Flight>,
}

pub struct Follower {
    flight: watch::Receiver<Flight>,
}

impl Flights {
    /// Join the flight of `key`: follow it if one is running, or lead a new one when
    /// `may_lead`. `None` when neither.
    pub fn join(self: &Arc<Self>, key: [u8; 32], may_lead: bool) -> Option<Joined> {
        let mut running = self.running.lock().ok()?;
        if let Some(sender) = running.get(&key) {
            return Some(Joined::Follower(Follower {
                flight: sender.subscribe(),
            }));
        }
        if !may_lead {
            return None;
        }
        let (sender, _) = watch::channel(Flight::Running);
        running.insert(key, sender.clone());
        Some(Joined::Leader(Leader {
            key,
            flights: self.clone(),
            sender,
        }))
    }

    /// Flights in the air (for `/admin/cache`).
    pub fn in_the_air(&self) -> usize {
        self.running
            .lock()
            .map(|running| running.len())
            .unwrap_or(0)
    }

    fn land(&self, key: &[u8; 32], sender: &watch::Sender<Flight>) {
        if let Ok(mut running) = self.running.lock()
            && running
                .get(key)
                .is_some_and(|current| current.same_channel(sender))
        {
            running.remove(key);
        }
    }
}

impl Leader {
    /// Whether any request waits for this flight's answer now.
    pub fn has_followers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// The leader's answer is stored: every follower serves `entry`.
    pub fn answered(&self, entry: Arc<StoredEntry>) {
        self.flights.land(&self.key, &self.sender);
        self.sender.send_replace(Flight::Answered(entry));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.flights.land(&self.key, &self.sender);
        if matches!(*self.sender.borrow(), Flight::Running) {
            self.sender.send_replace(Flight::Abandoned);
        }
    }
}

impl Follower {
    /// The leader's stored answer, or `None` when the flight was abandoned.
    pub async fn answer(mut self) -> Option<Arc<StoredEntry>> {
        let landed = self
            .flight
            .wait_for(|flight| !matches!(flight, Flight::Running))
            .await
            .ok()?
            .clone();
        match landed {
            Flight::Answered(entry) => Some(entry),
            Flight::Running | Flight::Abandoned => None,
        }
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").finish_non_exhaustive()
    }
}
