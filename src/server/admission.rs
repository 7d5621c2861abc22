//! Who is served, and in what order: the places served at once, each user's
//! share of the connections, and the fair order of clients waiting for a
//! place.
//!
//! A client the pool has accepted and identified first takes a share of its
//! user ([`Admission::hold`]): at most
//! [`max_connections_per_user`](super::Builder::max_connections_per_user)
//! held at once, from here until its instance lets it go, so that a user
//! over its share is refused at once instead of queueing behind its own
//! connections. Then, once the rules let it in, it takes a place among the
//! `instances` served at once ([`Held::place`]). When every place is taken
//! it waits, connected; a place that frees goes to the waiting client whose
//! user has the fewest connections served, the longest waiting among equals
//! (FIFO would hand a user queueing many connections every place in turn).
//!
//! Clients whose user is unknown (a remote pipe client, a listener of your
//! own without credentials) count as one user, so they cannot escape the
//! share by hiding who they are.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use tokio::sync::oneshot;

use crate::User;

/// The places and shares of one server.
#[derive(Debug)]
pub(crate) struct Admission {
    per_user: Option<usize>,
    state: Mutex<State>,
    /// How many wait now: `state.waiting.len()`, kept beside it under the
    /// lock, for [`Stats::waiting`](super::Stats::waiting) without it.
    waiting: AtomicU64,
}

/// A user's key: unknown users share one.
type Key = Option<User>;

#[derive(Debug, Default)]
struct State {
    /// Places free now. When one is free nobody waits: a freed place goes
    /// straight to a waiting client.
    free: usize,
    /// The users with a connection held, and theirs.
    users: HashMap<Key, Tally>,
    /// Clients waiting for a place, oldest first.
    waiting: Vec<Waiter>,
    next_seq: u64,
}

/// A user's connections.
#[derive(Debug, Default)]
struct Tally {
    /// Held: from the share taken until the instance lets the client go.
    held: usize,
    /// Of those, holding a place.
    serving: usize,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    key: Key,
    granted: oneshot::Sender<()>,
}

/// A refusal of [`Admission::hold`]: the user already holds its share.
#[derive(Debug)]
pub(crate) struct OverShare {
    pub(crate) user: Key,
    pub(crate) held: usize,
}

impl std::fmt::Display for OverShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user} already holds")?,
            None => f.write_str("clients of unknown users already hold")?,
        }
        write!(f, " its share: max_connections_per_user ({})", self.held)
    }
}

impl Admission {
    /// `places` served at once, at most `per_user` connections held per
    /// user.
    pub(crate) fn new(places: usize, per_user: Option<usize>) -> Arc<Self> {
        Arc::new(Admission {
            per_user,
            state: Mutex::new(State {
                free: places,
                ..State::default()
            }),
            waiting: AtomicU64::new(0),
        })
    }

    /// Clients waiting for a place now.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Relaxed)
    }

    fn lock(&self) -> Locked<'_> {
        // Nothing panics while the lock is held; if it did, the counts are
        // still whole (each change is one statement).
        Locked {
            state: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            published: &self.waiting,
        }
    }

    /// Takes a share of `user`'s, refused if it already holds
    /// `max_connections_per_user`.
    pub(crate) fn hold(self: &Arc<Self>, user: Option<User>) -> Result<Held, OverShare> {
        let mut state = self.lock();
        let tally = state.users.entry(user.clone()).or_default();
        if let Some(max) = self.per_user {
            if tally.held >= max {
                let held = tally.held;
                state.forget_if_idle(&user);
                return Err(OverShare { user, held });
            }
        }
        tally.held += 1;
        Ok(Held {
            admission: self.clone(),
            key: user,
        })
    }

    /// Connections held by `user` now (tests).
    #[cfg(test)]
    fn held(&self, user: &Key) -> usize {
        self.lock().users.get(user).map_or(0, |t| t.held)
    }
}

/// The state, locked; on unlock the count of waiters is published.
struct Locked<'a> {
    state: MutexGuard<'a, State>,
    published: &'a AtomicU64,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let waiting = self.state.waiting.len() as u64;
        self.published.store(waiting, Relaxed);
    }
}

impl State {
    fn tally(&mut self, key: &Key) -> &mut Tally {
        self.users
            .get_mut(key)
            .expect("a user with a connection held has a tally")
    }

    /// Drops `key`'s tally once it has nothing held or served.
    fn forget_if_idle(&mut self, key: &Key) {
        if let Some(tally) = self.users.get(key) {
            if tally.held == 0 && tally.serving == 0 {
                self.users.remove(key);
            }
        }
    }

    /// Takes a free place for `key`, if there is one.
    fn take_free(&mut self, key: &Key) -> bool {
        if self.free == 0 {
            return false;
        }
        self.free -= 1;
        self.tally(key).serving += 1;
        true
    }

    /// Gives a place back and hands free places to the fairest waiters.
    fn give_back(&mut self, key: &Key) {
        self.tally(key).serving -= 1;
        self.forget_if_idle(key);
        self.free += 1;
        while self.free > 0 && !self.waiting.is_empty() {
            let next = self.fairest();
            let waiter = self.waiting.remove(next);
            self.free -= 1;
            self.tally(&waiter.key).serving += 1;
            // A wait takes itself off the list, under this lock, before
            // its receiver goes (see `Turn`): the send cannot fail.
            let sent = waiter.granted.send(());
            debug_assert!(sent.is_ok(), "a place granted to a dropped wait");
            if sent.is_err() {
                self.tally(&waiter.key).serving -= 1;
                self.free += 1;
            }
        }
    }

    /// The index of the waiter whose user has the fewest served, the oldest
    /// among equals (`waiting` is oldest first).
    fn fairest(&self) -> usize {
        let serving = |w: &Waiter| self.users.get(&w.key).map_or(0, |t| t.serving);
        let mut best = 0;
        for (i, waiter) in self.waiting.iter().enumerate().skip(1) {
            if serving(waiter) < serving(&self.waiting[best]) {
                best = i;
            }
        }
        best
    }
}

/// A connection within its user's share, until dropped.
#[derive(Debug)]
pub(crate) struct Held {
    admission: Arc<Admission>,
    key: Key,
}

impl Held {
    /// A place among those served at once, if one is free now.
    pub(crate) fn try_place(&self) -> Option<Place> {
        let mut state = self.admission.lock();
        state.take_free(&self.key).then(|| self.placed())
    }

    /// A place among those served at once: at once if one is free, else
    /// when it is this client's turn. Cancel safe: a wait dropped gives up
    /// its turn, or the place it was just given.
    pub(crate) async fn place(&self) -> Place {
        let (seq, granted) = {
            let mut state = self.admission.lock();
            if state.take_free(&self.key) {
                return self.placed();
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let (tx, rx) = oneshot::channel();
            state.waiting.push(Waiter {
                seq,
                key: self.key.clone(),
                granted: tx,
            });
            (seq, rx)
        };
        let mut turn = Turn {
            held: self,
            seq,
            granted,
            waiting: true,
        };
        (&mut turn.granted)
            .await
            .expect("a waiter leaves the list only when granted or dropped");
        turn.waiting = false;
        self.placed()
    }

    fn placed(&self) -> Place {
        Place {
            admission: self.admission.clone(),
            key: self.key.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.tally(&self.key).held -= 1;
        state.forget_if_idle(&self.key);
    }
}

/// A wait for a place, in the list until granted or dropped. It owns the
/// receiver of the grant, so that the receiver outlives `drop`'s check of
/// the list: a grant is either still to come (the wait leaves the list) or
/// was sent to a live receiver (the place is given back), never lost or
/// made twice.
struct Turn<'a> {
    held: &'a Held,
    seq: u64,
    granted: oneshot::Receiver<()>,
    waiting: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let mut state = self.held.admission.lock();
        if let Some(i) = state.waiting.iter().position(|w| w.seq == self.seq) {
            state.waiting.remove(i);
        } else {
            // Granted meanwhile, and never taken: the place goes to the next.
            state.give_back(&self.held.key);
        }
    }
}

/// A connection's place among those served at once, until dropped.
#[derive(Debug)]
pub(crate) struct Place {
    admission: Arc<Admission>,
    key: Key,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.admission.lock().give_back(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, task::Poll};

    use super::*;

    /// User number `n`: a uid on Unix, a SID on Windows.
    fn user(n: &str) -> Option<User> {
        #[cfg(unix)]
        let name = n.to_owned();
        #[cfg(windows)]
        let name = format!("S-1-5-21-1-2-3-{n}");
        Some(User::parse(&name).unwrap())
    }

    /// Polls `fut` once: its output if ready.
    fn now<F: Future>(fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        let waker = futures_util::task::noop_waker();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
        {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_user_over_its_share_is_refused_and_others_are_not() {
        let admission = Admission::new(8, Some(2));
        let a1 = admission.hold(user("1")).unwrap();
        let _a2 = admission.hold(user("1")).unwrap();
        let over = admission.hold(user("1")).unwrap_err();
        assert_eq!(over.held, 2);
        assert!(
            over.to_string()
                .ends_with("already holds its share: max_connections_per_user (2)"),
            "{over}"
        );
        let _b = admission.hold(user("2")).unwrap();
        // Unknown users are one user.
        let _u1 = admission.hold(None).unwrap();
        let _u2 = admission.hold(None).unwrap();
        assert!(admission.hold(None).is_err());
        // A share frees when its connection goes.
        drop(a1);
        assert_eq!(admission.held(&user("1")), 1);
        let _a3 = admission.hold(user("1")).unwrap();
    }

    #[test]
    fn without_a_limit_every_connection_is_held() {
        let admission = Admission::new(1, None);
        let held: Vec<_> = (0..100)
            .map(|_| admission.hold(user("1")).unwrap())
            .collect();
        assert_eq!(admission.held(&user("1")), 100);
        drop(held);
        assert!(
            admission.lock().users.is_empty(),
            "a tally outlived its user"
        );
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_the_user_with_the_fewest_served_not_the_first_waiter() {
        let admission = Admission::new(2, None);
        let (a1, a2, a3) = (
            admission.hold(user("1")).unwrap(),
            admission.hold(user("1")).unwrap(),
            admission.hold(user("1")).unwrap(),
        );
        let b1 = admission.hold(user("2")).unwrap();
        let first = a1.place().await;
        let _second = a2.place().await;
        // Both places taken by user 1; its third waits, then user 2's.
        let mut a3_wait = Box::pin(a3.place());
        let mut b1_wait = Box::pin(b1.place());
        assert!(now(a3_wait.as_mut()).is_none());
        assert!(now(b1_wait.as_mut()).is_none());
        drop(first);
        // User 1 still has one served, user 2 none: user 2's turn, although
        // user 1's client waited longer.
        let b1_place = now(b1_wait.as_mut());
        assert!(b1_place.is_some(), "user 2 was not served");
        assert!(now(a3_wait.as_mut()).is_none(), "user 1 took a third place");
    }

    #[tokio::test]
    async fn among_users_with_as_many_served_the_longest_waiting_goes_first() {
        let admission = Admission::new(1, None);
        let holder = admission.hold(user("9")).unwrap();
        let place = holder.place().await;
        let held: Vec<_> = ["1", "2", "3"]
            .iter()
            .map(|u| admission.hold(user(u)).unwrap())
            .collect();
        let mut waits: Vec<_> = held.iter().map(|h| Box::pin(h.place())).collect();
        for wait in &mut waits {
            assert!(now(wait.as_mut()).is_none());
        }
        drop(place);
        let first = now(waits[0].as_mut());
        assert!(first.is_some());
        assert!(now(waits[1].as_mut()).is_none());
        assert!(now(waits[2].as_mut()).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn places_are_neither_lost_nor_made_when_waits_are_cancelled_while_places_free() {
        let admission = Admission::new(2, None);
        let most = Arc::new(AtomicU64::new(0));
        let serving = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (admission, most, serving) = (admission.clone(), most.clone(), serving.clone());
                tokio::spawn(async move {
                    let held = admission.hold(user(&(i % 3).to_string())).unwrap();
                    for _ in 0..2000 {
                        // Waits given up after one poll race the places
                        // others give back.
                        let place = tokio::select! {
                            place = held.place() => Some(place),
                            () = tokio::task::yield_now() => None,
                        };
                        if let Some(place) = place {
                            let now = serving.fetch_add(1, Relaxed) + 1;
                            most.fetch_max(now, Relaxed);
                            tokio::task::yield_now().await;
                            serving.fetch_sub(1, Relaxed);
                            drop(place);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(most.load(Relaxed) <= 2, "more served at once than places");
        let state = admission.lock();
        assert_eq!(state.free, 2, "places lost or made");
        assert!(state.waiting.is_empty());
        assert!(state.users.is_empty(), "{:?}", state.users);
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn a_dropped_wait_gives_up_its_turn_or_the_place_it_was_given() {
        let admission = Admission::new(1, None);
        let (a, b, c) = (
            admission.hold(user("1")).unwrap(),
            admission.hold(user("2")).unwrap(),
            admission.hold(user("3")).unwrap(),
        );
        let place = a.place().await;
        // Dropped while waiting: off the list.
        let mut b_wait = Box::pin(b.place());
        assert!(now(b_wait.as_mut()).is_none());
        drop(b_wait);
        assert!(admission.lock().waiting.is_empty());
        // Granted, then dropped before it was polled again: the place goes
        // on to the next waiter.
        let mut b_wait = Box::pin(b.place());
        let mut c_wait = Box::pin(c.place());
        assert!(now(b_wait.as_mut()).is_none());
        assert!(now(c_wait.as_mut()).is_none());
        drop(place);
        drop(b_wait);
        let c_place = now(c_wait.as_mut());
        assert!(c_place.is_some(), "the place was lost");
        drop((c_place, c_wait));
        assert_eq!(admission.lock().free, 1, "the place was not given back");
    }
}
