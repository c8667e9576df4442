//! Group commit: calls that arrive while a write transaction commits share
//! the next one, and with it one commit (one fsync on SQLite, one round of
//! WAL flushing and one chain-head lock on PostgreSQL).
//!
//! There is no background task (the core has no runtime): each call puts its
//! prepared work in the queue and then waits for either its answer or the
//! leader's lock. Whoever takes the lock leads: it takes what is queued, up
//! to a bounded weight, commits it as one batch and answers every member
//! before it lets the lock go. A call is answered only after the batch that
//! holds it committed, so an acknowledged write is as durable as before.
//!
//! Callers should submit from a task of their own (the vault's handlers
//! do), so that a client going away cannot drop a leader halfway. Should one
//! be dropped anyway, its transaction rolls back and its members' answer
//! channels close unanswered: [`GroupCommit::submit`] reports that as
//! `None`, and each member does its work again on its own. Work whose
//! caller was dropped while it waited is left out of the next batch.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use futures::channel::oneshot;
use futures::future::{select, Either};

/// Work that can be queued.
pub(crate) trait Queued {
    /// The rows this work writes (at least 1), against a batch's bound.
    fn weight(&self) -> usize;
    /// Whether nobody waits for its answer any more (the call was
    /// dropped): such work is left out of the next batch, not written.
    fn abandoned(&self) -> bool;
}

/// A queue of pending work `T` and the leader's lock.
pub(crate) struct GroupCommit<T> {
    pending: Mutex<VecDeque<T>>,
    leader: futures::lock::Mutex<()>,
    max_weight: usize,
}

impl<T: Queued> GroupCommit<T> {
    /// A queue whose batches weigh at most `max_weight`, except that a batch
    /// always takes at least one item.
    pub(crate) fn new(max_weight: usize) -> Self {
        Self { pending: Mutex::new(VecDeque::new()), leader: futures::lock::Mutex::new(()), max_weight }
    }

    /// Queues `item`, whose answer arrives on `answer`, and waits for that
    /// answer, leading batches (`commit`) while nobody else does. `commit`
    /// must answer every item it is given before its future ends. `None`:
    /// the batch holding `item` was abandoned before it answered.
    pub(crate) async fn submit<R, F, Fut>(&self, item: T, mut answer: oneshot::Receiver<R>, mut commit: F) -> Option<R>
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.pending.lock().expect("group commit queue").push_back(item);
        loop {
            let lead = self.leader.lock();
            let guard = match select(&mut answer, lead).await {
                Either::Left((answered, _)) => return answered.ok(),
                Either::Right((guard, _)) => guard,
            };
            // Leaders answer before they let go, so holding the lock, the
            // answer is either here, abandoned, or the item is still queued.
            match answer.try_recv() {
                Ok(Some(answered)) => return Some(answered),
                Err(oneshot::Canceled) => return None,
                Ok(None) => {}
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                // Not answered, not abandoned and not queued cannot happen;
                // never spin on it.
                return None;
            }
            commit(batch).await;
            drop(guard);
        }
    }

    /// The oldest queued items still awaited, up to the weight bound.
    fn take_batch(&self) -> Vec<T> {
        let mut pending = self.pending.lock().expect("group commit queue");
        pending.retain(|item| !item.abandoned());
        let mut batch = Vec::new();
        let mut weight = 0;
        while let Some(next) = pending.front() {
            let next_weight = next.weight().max(1);
            if !batch.is_empty() && weight + next_weight > self.max_weight {
                break;
            }
            weight += next_weight;
            batch.extend(pending.pop_front());
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use futures::executor::block_on;
    use futures::future::join_all;

    use super::*;

    /// Pending once, waking itself, then ready.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    struct Item {
        id: usize,
        weight: usize,
        reply: oneshot::Sender<usize>,
    }

    impl Queued for Item {
        fn weight(&self) -> usize {
            self.weight
        }
        fn abandoned(&self) -> bool {
            self.reply.is_canceled()
        }
    }

    fn item(id: usize, weight: usize) -> (Item, oneshot::Receiver<usize>) {
        let (reply, answer) = oneshot::channel();
        (Item { id, weight, reply }, answer)
    }

    #[test]
    fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let queue = GroupCommit::new(1_000);
        let batches = RefCell::new(Vec::new());
        let calls = (0..20).map(|id| {
            let (item, answer) = item(id, 1);
            let (queue, batches) = (&queue, &batches);
            queue.submit(item, answer, move |batch: Vec<Item>| async move {
                batches.borrow_mut().push(batch.iter().map(|i| i.id).collect::<Vec<_>>());
                // Yield once, as a real commit would, so others queue meanwhile.
                YieldOnce(false).await;
                for member in batch {
                    let _ = member.reply.send(member.id * 10);
                }
            })
        });
        let answers = block_on(join_all(calls));
        assert_eq!(answers, (0..20).map(|id| Some(id * 10)).collect::<Vec<_>>());
        let batches = batches.into_inner();
        let mut committed: Vec<usize> = batches.iter().flatten().copied().collect();
        committed.sort_unstable();
        assert_eq!(committed, (0..20).collect::<Vec<_>>(), "every call committed exactly once");
        assert!(batches.len() < 20, "calls that queued while a batch committed shared the next: {batches:?}");
    }

    #[test]
    fn a_batch_never_exceeds_its_weight_unless_one_item_does() {
        let queue = GroupCommit::new(10);
        let mut answers = Vec::new();
        for (id, weight) in [(0, 4), (1, 4), (2, 4), (3, 30), (4, 1)] {
            let (item, answer) = item(id, weight);
            queue.pending.lock().unwrap().push_back(item);
            answers.push(answer);
        }
        let batches: Vec<Vec<usize>> = std::iter::from_fn(|| {
            let batch = queue.take_batch();
            (!batch.is_empty()).then(|| batch.iter().map(|i| i.id).collect())
        })
        .collect();
        assert_eq!(batches, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn work_nobody_waits_for_is_left_out() {
        let queue = GroupCommit::new(10);
        let mut kept = Vec::new();
        for id in 0..4 {
            let (item, answer) = item(id, 1);
            queue.pending.lock().unwrap().push_back(item);
            if id % 2 == 0 {
                kept.push(answer);
            } // the others' callers went away
        }
        let batch: Vec<usize> = queue.take_batch().iter().map(|i| i.id).collect();
        assert_eq!(batch, vec![0, 2]);
    }

    #[test]
    fn an_abandoned_batch_answers_none() {
        let queue = GroupCommit::new(10);
        let (item, answer) = item(7, 1);
        let answered = block_on(queue.submit(item, answer, |batch: Vec<Item>| async move {
            drop(batch); // the leader went away before it answered
        }));
        assert_eq!(answered, None);
    }
}
