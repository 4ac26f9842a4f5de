//! The bounded pool behind each `ServerPool`: idle connections on a stack
//! (the most recently used first, so the warmest serve and the others age out),
//! waiting clients in a FIFO queue, and a returned connection handed straight
//! to the longest waiter, so nobody who arrives later can take it first.
//!
//! Written here instead of on `deadpool::managed`: with 50 clients on 20
//! servers most checkouts wait, and deadpool's path (a semaphore permit, then
//! its queue mutex, a wait timer per waiter, a clock read per recycle, a
//! second mutex and a semaphore wake on return) measured a fifth of the
//! pooler's CPU per transaction under pgbench. Here a checkout or a return is
//! one uncontended mutex, a waiter needs no timer (the maintenance task
//! expires waits, oldest first, since the queue is in arrival order), and a
//! return wakes the waiter that gets the connection, not a permit race.

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

/// What a waiting client is given.
pub enum Grant<T> {
    /// A connection someone returned.
    Ready(Lease<T>),
    /// A place freed up (a connection was closed): open a new one.
    Open(Reservation<T>),
    /// It waited longer than the limit.
    TimedOut,
}

/// The outcome of asking for a connection.
pub enum Take<T> {
    Ready(Lease<T>),
    /// Below the size limit with nothing idle: open a new connection.
    Open(Reservation<T>),
    /// At the limit: wait for a return (or a place) in arrival order.
    Wait(oneshot::Receiver<Grant<T>>),
}

struct Waiter<T> {
    since: Instant,
    tx: oneshot::Sender<Grant<T>>,
}

struct State<T> {
    idle: Vec<T>,
    /// Connections that exist or are being opened, idle or not.
    size: usize,
    waiters: VecDeque<Waiter<T>>,
}

pub struct Slots<T> {
    max: usize,
    state: Mutex<State<T>>,
}

/// Counts for SHOW POOLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCounts {
    pub size: usize,
    pub idle: usize,
    pub waiting: usize,
}

impl<T> Slots<T> {
    pub fn new(max: usize) -> Arc<Slots<T>> {
        Arc::new(Slots {
            max,
            state: Mutex::new(State {
                idle: Vec::new(),
                size: 0,
                waiters: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned lock still
        // holds consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// An idle connection, a place to open one, or a place in the queue.
    pub fn take(self: &Arc<Self>, now: Instant) -> Take<T> {
        let mut st = self.lock();
        if let Some(value) = st.idle.pop() {
            return Take::Ready(self.lease(value));
        }
        if st.size < self.max {
            st.size += 1;
            return Take::Open(self.reservation());
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter { since: now, tx });
        Take::Wait(rx)
    }

    /// A place to open a connection, if below the limit and nobody waits
    /// (for keeping a minimum size warm).
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation<T>> {
        let mut st = self.lock();
        if st.size < self.max && st.waiters.is_empty() {
            st.size += 1;
            return Some(self.reservation());
        }
        None
    }

    pub fn counts(&self) -> SlotCounts {
        let st = self.lock();
        SlotCounts {
            size: st.size,
            idle: st.idle.len(),
            waiting: st.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
        }
    }

    /// Takes the idle connections `keep` rejects out of the pool.
    pub fn remove_idle(self: &Arc<Self>, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        {
            let mut st = self.lock();
            let mut i = 0;
            while i < st.idle.len() {
                if keep(&st.idle[i]) {
                    i += 1;
                } else {
                    removed.push(st.idle.remove(i));
                }
            }
        }
        for _ in &removed {
            self.closed_one();
        }
        removed
    }

    /// Tells the clients that have waited since before `cutoff` that they
    /// timed out; returns how many.
    pub fn expire_waiters(&self, cutoff: Instant) -> usize {
        let mut expired = Vec::new();
        {
            let mut st = self.lock();
            while st.waiters.front().is_some_and(|w| w.since < cutoff) {
                if let Some(w) = st.waiters.pop_front() {
                    expired.push(w.tx);
                }
            }
        }
        // Sent outside the lock: nothing here can come back into it, but a
        // dropped receiver's grant is dropped here, and that may.
        expired
            .into_iter()
            .filter(|tx| !tx.is_closed())
            .map(|tx| tx.send(Grant::TimedOut))
            .filter(Result::is_ok)
            .count()
    }

    /// A connection comes back: to the longest waiter still waiting, else to
    /// the idle stack.
    fn put(self: &Arc<Self>, value: T) {
        self.pass_on(Grant::Ready(self.lease(value)), |st, unsent| {
            if let Grant::Ready(mut lease) = unsent {
                st.idle.push(lease.disarm());
            }
        });
    }

    /// A connection (or a place for one) is gone for good: its place goes to
    /// the longest waiter, who opens a new one; with nobody waiting the size
    /// shrinks.
    fn closed_one(self: &Arc<Self>) {
        self.pass_on(Grant::Open(self.reservation()), |st, unsent| {
            if let Grant::Open(mut place) = unsent {
                place.armed = false;
                st.size = st.size.saturating_sub(1);
            }
        });
    }

    /// Gives `grant` to the longest waiter still waiting (a waiter that gave
    /// up hands it back, and the next is tried); with nobody waiting,
    /// `otherwise` takes it back under the lock.
    fn pass_on(&self, mut grant: Grant<T>, otherwise: impl FnOnce(&mut State<T>, Grant<T>)) {
        loop {
            let waiter = {
                let mut st = self.lock();
                match st.waiters.pop_front() {
                    Some(w) => w,
                    None => return otherwise(&mut st, grant),
                }
            };
            match waiter.tx.send(grant) {
                Ok(()) => return,
                Err(unsent) => grant = unsent,
            }
        }
    }

    fn lease(self: &Arc<Self>, value: T) -> Lease<T> {
        Lease {
            value: ManuallyDrop::new(value),
            slots: self.clone(),
            armed: true,
        }
    }

    fn reservation(self: &Arc<Self>) -> Reservation<T> {
        Reservation {
            slots: self.clone(),
            armed: true,
        }
    }
}

/// A connection out of the pool. Dropped, it goes back (and the next
/// checkout decides whether it is still fit); `detach` takes it out for good.
pub struct Lease<T> {
    value: ManuallyDrop<T>,
    slots: Arc<Slots<T>>,
    armed: bool,
}

impl<T> Lease<T> {
    /// Takes the connection out of the pool for good; its place is freed.
    pub fn detach(mut self) -> T {
        let value = self.disarm();
        self.slots.closed_one();
        value
    }

    /// The value, leaving a lease that does nothing when dropped.
    fn disarm(&mut self) -> T {
        self.armed = false;
        // SAFETY: `armed` is now false, so neither Drop nor Deref touches
        // `value` again (no lease escapes a disarm except to be dropped).
        unsafe { ManuallyDrop::take(&mut self.value) }
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if self.armed {
            let value = self.disarm();
            self.slots.put(value);
        }
    }
}

impl<T> Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

/// A counted place for a connection being opened. Filled, it becomes a
/// lease; dropped (the connect failed), the place is freed.
pub struct Reservation<T> {
    slots: Arc<Slots<T>>,
    armed: bool,
}

impl<T> Reservation<T> {
    pub fn fill(mut self, value: T) -> Lease<T> {
        self.armed = false;
        self.slots.lease(value)
    }
}

impl<T> Drop for Reservation<T> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.slots.closed_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ready(t: Take<u32>) -> Lease<u32> {
        match t {
            Take::Ready(l) => l,
            _ => panic!("expected an idle value"),
        }
    }

    fn open(t: Take<u32>) -> Reservation<u32> {
        match t {
            Take::Open(r) => r,
            _ => panic!("expected a place to open"),
        }
    }

    fn wait(t: Take<u32>) -> oneshot::Receiver<Grant<u32>> {
        match t {
            Take::Wait(w) => w,
            _ => panic!("expected to wait"),
        }
    }

    #[test]
    fn opens_up_to_the_limit_then_reuses_the_latest_returned() {
        let s = Slots::new(2);
        let now = Instant::now();
        let a = open(s.take(now)).fill(1);
        let b = open(s.take(now)).fill(2);
        let w = wait(s.take(now));
        drop(w);
        drop(a);
        drop(b);
        assert_eq!(
            s.counts(),
            SlotCounts {
                size: 2,
                idle: 2,
                waiting: 0
            }
        );
        assert_eq!(*ready(s.take(now)), 2, "most recently returned first");
    }

    #[tokio::test]
    async fn a_return_goes_to_the_longest_waiter() {
        let s = Slots::new(1);
        let now = Instant::now();
        let held = open(s.take(now)).fill(7);
        let first = wait(s.take(now));
        let second = wait(s.take(now));
        assert_eq!(s.counts().waiting, 2);
        drop(held);
        match first.await {
            Ok(Grant::Ready(l)) => assert_eq!(*l, 7),
            _ => panic!("the first waiter gets it"),
        }
        // Dropping the first waiter's lease passes it on to the second.
        match second.await {
            Ok(Grant::Ready(l)) => assert_eq!(*l, 7),
            _ => panic!("then the second"),
        }
        assert_eq!(s.counts().idle, 1);
    }

    #[tokio::test]
    async fn a_waiter_that_left_is_skipped() {
        let s = Slots::new(1);
        let now = Instant::now();
        let held = open(s.take(now)).fill(1);
        drop(wait(s.take(now)));
        let live = wait(s.take(now));
        assert_eq!(s.counts().waiting, 1);
        drop(held);
        assert!(matches!(live.await, Ok(Grant::Ready(_))));
    }

    #[tokio::test]
    async fn a_closed_connection_or_failed_open_frees_its_place_for_a_waiter() {
        let s = Slots::new(1);
        let now = Instant::now();
        let r = open(s.take(now));
        let w = wait(s.take(now));
        drop(r); // the connect failed
        let r2 = match w.await {
            Ok(Grant::Open(r)) => r,
            _ => panic!("the waiter may open one instead"),
        };
        assert_eq!(s.counts().size, 1);
        let lease = r2.fill(5);
        assert_eq!(lease.detach(), 5);
        assert_eq!(s.counts().size, 0);
        open(s.take(now));
    }

    #[tokio::test]
    async fn waits_expire_oldest_first() {
        let s = Slots::new(1);
        let t0 = Instant::now();
        let _held = open(s.take(t0)).fill(1);
        let old = wait(s.take(t0));
        let young = wait(s.take(t0 + Duration::from_secs(5)));
        assert_eq!(s.expire_waiters(t0 + Duration::from_secs(1)), 1);
        assert!(matches!(old.await, Ok(Grant::TimedOut)));
        assert_eq!(s.counts().waiting, 1);
        drop(young);
        assert_eq!(s.counts().waiting, 0);
    }

    #[test]
    fn removing_idle_frees_places_and_reserve_respects_waiters() {
        let s = Slots::new(2);
        let now = Instant::now();
        let a = open(s.take(now)).fill(1);
        let b = open(s.take(now)).fill(2);
        drop(a);
        drop(b);
        let gone = s.remove_idle(|v| *v == 2);
        assert_eq!(gone, vec![1]);
        assert_eq!(s.counts().size, 1);
        let r = s.reserve().expect("below the limit");
        assert!(s.reserve().is_none(), "at the limit");
        drop(r);
        assert_eq!(s.counts().size, 1);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Take,
            /// The connect of a place fails instead of filling it.
            TakeFailingOpen,
            Return(usize),
            Close(usize),
            LeaveQueue(usize),
            ExpireAll,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Take),
                1 => Just(Op::TakeFailingOpen),
                3 => (0..8usize).prop_map(Op::Return),
                1 => (0..8usize).prop_map(Op::Close),
                1 => (0..8usize).prop_map(Op::LeaveQueue),
                1 => Just(Op::ExpireAll),
            ]
        }

        /// Takes what granted waiters were given, oldest first; a waiter
        /// given nothing yet must not be older than one given something.
        fn collect(
            waiting: &mut Vec<oneshot::Receiver<Grant<u32>>>,
            held: &mut Vec<Lease<u32>>,
            next: &mut u32,
        ) -> Result<(), TestCaseError> {
            let mut still = Vec::new();
            let mut saw_empty = false;
            for mut rx in waiting.drain(..) {
                match rx.try_recv() {
                    Ok(Grant::Ready(l)) => {
                        prop_assert!(!saw_empty, "a younger waiter was served first");
                        held.push(l);
                    }
                    Ok(Grant::Open(r)) => {
                        prop_assert!(!saw_empty, "a younger waiter was served first");
                        *next += 1;
                        held.push(r.fill(*next));
                    }
                    Ok(Grant::TimedOut) => {}
                    Err(oneshot::error::TryRecvError::Empty) => {
                        saw_empty = true;
                        still.push(rx);
                    }
                    Err(e) => prop_assert!(false, "waiter dropped by the pool: {e:?}"),
                }
            }
            *waiting = still;
            Ok(())
        }

        proptest! {
            #[test]
            fn places_are_never_lost_or_exceeded(max in 1..4usize, ops in proptest::collection::vec(op(), 1..60)) {
                let s = Slots::<u32>::new(max);
                let now = Instant::now();
                let mut held: Vec<Lease<u32>> = Vec::new();
                let mut waiting = Vec::new();
                let mut next = 0u32;
                for op in ops {
                    match op {
                        Op::Take | Op::TakeFailingOpen => match s.take(now) {
                            Take::Ready(l) => held.push(l),
                            Take::Open(r) if matches!(op, Op::Take) => {
                                next += 1;
                                held.push(r.fill(next));
                            }
                            Take::Open(r) => drop(r),
                            Take::Wait(rx) => waiting.push(rx),
                        },
                        Op::Return(i) if !held.is_empty() => drop(held.remove(i % held.len())),
                        Op::Close(i) if !held.is_empty() => {
                            held.remove(i % held.len()).detach();
                        }
                        Op::LeaveQueue(i) if !waiting.is_empty() => {
                            drop(waiting.remove(i % waiting.len()));
                        }
                        Op::ExpireAll => {
                            s.expire_waiters(now + std::time::Duration::from_secs(1));
                        }
                        _ => {}
                    }
                    collect(&mut waiting, &mut held, &mut next)?;
                    let c = s.counts();
                    prop_assert!(c.size <= max);
                    prop_assert!(held.len() + c.idle <= c.size);
                    prop_assert!(c.idle == 0 || c.waiting == 0, "idle servers while clients wait");
                    prop_assert_eq!(c.waiting, waiting.len());
                }
                drop(waiting);
                held.clear();
                let c = s.counts();
                prop_assert_eq!(c.size, c.idle, "every place came back");
                // All `max` places can be had again, none by waiting.
                let mut again = Vec::new();
                for _ in 0..max {
                    match s.take(now) {
                        Take::Ready(l) => again.push(l),
                        Take::Open(r) => again.push(r.fill(0)),
                        Take::Wait(_) => prop_assert!(false, "a place was lost"),
                    }
                }
            }
        }
    }
}
